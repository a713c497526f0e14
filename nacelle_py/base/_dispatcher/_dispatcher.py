"""Dispatcher: the worker pool as an ordinary Process, with its run/quit/join lifecycle.

Every accepted task ends in exactly one outcome (completed, failed, timed
out) or is handed back: by ``quit(drain=False)`` (returned) or by an unwind
that cancels ``run()`` (``handed_back``).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus

from ..._components import Process
from ..._errors import RegistrationError
from ..._extras import require
from ..._health import Health, HealthComponent
from ..._inject import Inject
from ..._validate import positive
from ..._waker import Waker
from .._redis._settings import RedisSettings
from ._backend import Backend
from ._call import Calls
from ._items import task_of
from ._memory import MemoryBackend
from ._monitor import monitor
from ._named import NamedTasks
from ._pool import WorkerPool
from ._settings import BackendOptions, DispatcherSettings, check_keywords, resolve
from ._state import DRAINING, RUNNING, STOPPED, STOPPING, DispatcherStatus, Phase
from ._stats import DispatcherError, DispatcherStats, pool_stats
from ._tasks import TaskRegistry

START_WITHIN = 10.0  # seconds ``async with`` waits for the backend to serve (Redis: reach it, create the group)

__all__ = ["Dispatcher"]

DEFAULT_TASK_TIMEOUT = 10.0


def _check_positive(name: str, value: object, *, integer: bool, allow_none: bool = False) -> Any:
    return positive("Dispatcher", name, value, integer=integer, allow_none=allow_none)


class Dispatcher(NamedTasks, WorkerPool, Process):
    """An autoscaling pool of workers that run tasks; register it as a process or use it standalone.

    ``dispatch(task)`` never blocks: it queues up to ``max_buffered`` tasks
    (also before ``run`` starts) and returns False, counted, when the buffer
    is full. A task is an async callable, an object with ``execute()`` (async
    or not), or a plain function (run on one of ``max_threads`` daemon
    threads). Each task is bounded by ``task_timeout`` (or its own
    ``timeout``); failures and timeouts are logged and counted and never stop
    a worker. Workers scale from ``min_workers`` up to ``max_workers`` while
    tasks wait, and idle ones retire after ``scale_down_after`` seconds. The
    health key (the component's name) turns healthy once the workers run, and
    unhealthy while the pool is saturated for longer than ``saturated_after``.

    Named tasks (``@dispatcher.task``, ``enqueue``, ``result``) flow through
    the backend: ``memory`` (this process) or ``redis`` (a stream every
    replica consumes), chosen by ``DISPATCHER_BACKEND`` or ``backend=``; the
    other keywords override their ``DISPATCHER_*``/``REDIS_URL`` settings
    (standalone, only the keywords apply). See docs/dispatcher.md.
    """

    health_keys: ClassVar[tuple[str, ...] | None] = ("{name}",)  # and "{name}.redis" on Redis (the engine is a setting)

    health: Health | None = Inject("health", optional=True)
    logger: Any = Inject("logger", optional=True)
    app_name: str | None = Inject("app_name", optional=True)
    settings: DispatcherSettings = Inject()
    redis_settings: RedisSettings = Inject()

    STOPPED = DispatcherStatus.STOPPED
    STOPPING = DispatcherStatus.STOPPING
    RUNNING = DispatcherStatus.RUNNING
    DRAINING = DispatcherStatus.DRAINING

    def __init__(
        self,
        max_buffered: int = 1000,
        min_workers: int = 1,
        max_workers: int = 64,
        task_timeout: float | None = DEFAULT_TASK_TIMEOUT,
        scale_down_after: float = 300.0,
        *,
        max_threads: int = 16,
        saturated_after: float = 30.0,
        max_processes: int | None = None,
        backend: str | None = None,
        redis_url: str | None = None,
        stream: str | None = None,
        lease: float | None = None,
        max_deliveries: int | None = None,
        consume: bool | None = None,
        key_ttl: float | None = None,
    ) -> None:
        self.max_buffered = _check_positive("max_buffered", max_buffered, integer=True)
        self.min_workers = _check_positive("min_workers", min_workers, integer=True)
        self.max_workers = _check_positive("max_workers", max_workers, integer=True)
        if self.min_workers > self.max_workers:
            raise RegistrationError(
                f"Dispatcher: min_workers ({min_workers}) must not exceed max_workers ({max_workers})"
            )
        self.task_timeout = _check_positive("task_timeout", task_timeout, integer=False, allow_none=True)
        self.scale_down_after = _check_positive("scale_down_after", scale_down_after, integer=False)
        self.max_threads = _check_positive("max_threads", max_threads, integer=True)
        self.saturated_after = _check_positive("saturated_after", saturated_after, integer=False)
        self.max_processes: int | None = _check_positive("max_processes", max_processes, integer=True, allow_none=True)
        self._given = check_keywords(
            dict(
                backend=backend,
                redis_url=redis_url,
                stream=stream,
                lease=lease,
                max_deliveries=max_deliveries,
                consume=consume,
                key_ttl=key_ttl,
            )
        )
        self._init_pool()
        self._stopped: anyio.Event | None = None
        self._health: HealthComponent | None = None
        self._exit_stack: Any = None
        self._registry = TaskRegistry("Dispatcher")
        self._calls = Calls(self)
        self._backend: Backend | None = None
        self._opened = False
        self._limiter: anyio.CapacityLimiter | None = None
        self.options: BackendOptions = resolve(self._given, None, None, "nacelle:dispatcher")
        if self.options.backend == "redis":
            self._refuse_callables()

    # -- the public surface -----------------------------------------------------------

    @property
    def status(self) -> DispatcherStatus:
        """STOPPED, RUNNING, DRAINING or STOPPING."""
        return self._state.status

    @property
    def handed_back(self) -> list[Any]:
        """Tasks an unwind took back without running them (``quit`` returns its own)."""
        return list(self._handed)

    async def quit(self, drain: bool = True) -> list[Any]:
        """Stop the dispatcher; returns the tasks that will never run.

        ``drain=True`` runs everything already accepted first; ``drain=False``
        lets running tasks finish and hands back the queued ones. Called while
        not running, it hands back everything queued.
        """
        if not isinstance(drain, bool):
            raise TypeError(f"Dispatcher.quit(drain=...) takes a bool, got {drain!r}")
        handed: list[Any] = []
        if self._tg is None:
            handed = self._take_queued()
            if self._state.phase is Phase.NEW:
                self._move(phase=Phase.ENDED)
            self._log_event("info", "dispatcher quit while stopped", handed_back=len(handed))
            return handed
        try:
            if self._backend is not None:
                await self._backend.stop()  # stop taking deliveries; Redis hands back what has not started
            if drain and self._state.status != STOPPING:
                self._move(DRAINING)
                self._wake()
                await self.join()
            else:
                self._move(STOPPING)
                handed = self._take_queued()
                while self._running() or self._pool.running():
                    await self._wait_changed(0.05)
        except BaseException:
            # The caller gave up quitting (a cancelled quit): the dispatcher runs on, and
            # tasks already taken back stay findable with the unwind's.
            self._handed.extend(handed)
            if self._tg is not None and self._state.phase is Phase.RUNNING:
                self._move(RUNNING)
            raise
        if self._state.phase in (Phase.RUNNING, Phase.QUITTING):
            self._move(phase=Phase.QUITTING)
        self._notify()
        if self._stopped is not None:
            await self._stopped.wait()
        return handed

    async def join(self) -> None:
        """Wait until every task accepted so far has an outcome (nothing queued or running).

        Before the first ``run()`` it waits for the run to start; after a run
        has ended, with tasks still queued, it raises ``DispatcherError`` (no
        worker would ever finish them).
        """
        while self._queue or self._running() or self._pool.pending():
            if self._state.was_quit and self._tg is None and self._queue:
                raise DispatcherError(
                    "Dispatcher.join: the dispatcher is not running and tasks are queued; call run() first"
                )
            await self._wait_changed(0.05)

    def stats(self) -> DispatcherStats:
        """A snapshot of the counters, the pool's size and the recent dispatch-to-start latencies."""
        stats = pool_stats(self)
        backend = self._backend
        return stats._replace(**backend.extra_stats()) if backend is not None else stats

    # -- as a Process -------------------------------------------------------------------

    async def init(self) -> None:
        """Under an App: register the health key, apply the settings and open the backend (Redis: connect).

        The init of a restart opens a dispatcher that a stop or a failed run closed: a run
        follows, so tasks are accepted again and wait for it, as at boot.
        """
        if self._state.was_quit:
            self._move(phase=Phase.NEW)
        health = vars(self).get("health")
        owner = "dispatcher"
        if health is not None:
            owner = health.owner or owner
            self._health = health.register(owner)
        app = vars(self).get("app_name")
        stream = f"nacelle:{app}:{owner}" if app else f"nacelle:{owner}"
        self.options = resolve(self._given, vars(self).get("settings"), vars(self).get("redis_settings"), stream)
        if self.options.backend == "redis":
            self._refuse_callables()
        backend = await self._ready_backend()
        if health is not None and backend.kind == "redis":
            backend.health = health.register(f"{owner}.redis")

    async def preflight(self) -> None:
        """On Redis: reach the server before any component of the app initialises (a wrong URL changes nothing)."""
        options = resolve(self._given, vars(self).get("settings"), vars(self).get("redis_settings"), "preflight")
        if options.backend == "redis":
            require("coredis", "redis", "Dispatcher(backend='redis')")  # the extra's own error, not an ImportError
            from .._redis._client import ping
            from ._redis import CONNECT_WITHIN

            await ping(options.redis_url, within=CONNECT_WITHIN, who="Dispatcher (preflight)")

    async def finalize(self) -> None:
        """Let go of the backend (a Redis client closes with the run that owns it)."""
        self._drop_backend()

    async def run(self) -> None:
        """Run the workers until ``quit``; a second concurrent call waits for the first (reentrant)."""
        await self._run()

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """``run()``, telling ``task_status`` once the backend serves (Redis: the group exists)."""
        if self._tg is not None:
            assert self._stopped is not None
            task_status.started()
            await self._stopped.wait()
            return
        backend = await self._ready_backend()
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()
        self._stopped = anyio.Event()
        self._waker = Waker()
        self._work_event = anyio.Event()
        self._monitor_kick = anyio.Event()
        self._log = vars(self).get("logger") or structlog.get_logger().bind(component="dispatcher")
        self._pool.reopen()  # exit requests left from the last run would take new tasks' threads
        self._move(RUNNING, Phase.RUNNING)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._waker.pump)
                for _ in range(self.min_workers):
                    self._spawn()
                # Tasks queued before run() get workers at once, up to the maximum.
                for _ in range(min(len(self._queue), self.max_workers) - self.min_workers):
                    self._scale_up()
                tg.start_soon(monitor, self)
                await tg.start(backend.serve)
                if self._health is not None:
                    self._health.update(True)
                task_status.started()
                while not self._state.quitting:
                    await self._wait_changed(None)
                await backend.finish()  # settle the drained tasks' outcomes before the backend closes
                tg.cancel_scope.cancel()
        finally:
            self._unwound()

    async def stop(self) -> None:
        """Drain: everything accepted runs before ``run`` returns; then accept nothing more.

        Under an App no run follows a stop (unless a restart initialises the dispatcher
        again), so a task dispatched afterwards would never run: ``dispatch`` returns False
        instead (until ``init()`` of a restart, or ``run()``, opens it again).
        """
        await self.quit(drain=True)
        self._move(phase=Phase.CLOSED)

    # -- standalone ---------------------------------------------------------------------

    async def __aenter__(self) -> Dispatcher:
        await self._ready_backend()
        stack = anyio.create_task_group()
        await stack.__aenter__()
        started = False
        try:
            # Back to the body once the backend serves: a quit from the body then never
            # races the backend's start (on Redis, the consumer group's creation).
            with anyio.move_on_after(START_WITHIN):
                await stack.start(self._run)
                started = True
        finally:
            if not started:
                stack.cancel_scope.cancel()
                try:
                    await stack.__aexit__(None, None, None)
                finally:
                    self._drop_backend()
        if not started:
            raise DispatcherError(
                f"Dispatcher: the {self.options.backend} backend did not start within {START_WITHIN:g} s"
            )
        self._exit_stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        stack, self._exit_stack = self._exit_stack, None
        assert stack is not None
        failed = isinstance(exc, Exception)
        try:
            if self._tg is not None:
                with anyio.CancelScope(shield=failed):
                    await self.quit(drain=exc_type is None)
        except BaseException:
            stack.cancel_scope.cancel()  # a quit that failed or was cancelled leaves no run behind
            raise
        finally:
            # The body's own error propagates as itself, not wrapped in the task
            # group's ExceptionGroup; cancellation still goes through the group.
            try:
                if failed:
                    await stack.__aexit__(None, None, None)
                else:
                    await stack.__aexit__(exc_type, exc, tb)
            finally:
                self._drop_backend()
        return None

    # -- the backend ----------------------------------------------------------------------

    async def _ready_backend(self) -> Backend:
        """The backend for the options in force, built and opened on first use."""
        backend = self._backend
        if backend is None:
            backend = self._backend = self._build_backend()
        if not self._opened:
            await backend.open()
            self._opened = True
        return backend

    def _build_backend(self) -> Backend:
        options = self.options
        processes = self._processes() if self.max_processes is not None else None
        if options.backend == "redis":
            require("coredis", "redis", "Dispatcher(backend='redis')")
            from ._redis import RedisBackend  # coredis is an extra: imported only when used

            return RedisBackend(self, options, processes=processes)
        return MemoryBackend(self, key_ttl=options.key_ttl, processes=processes)

    def _drop_backend(self) -> None:
        """Forget the backend: the next use builds one for the options then in force."""
        self._backend = None
        self._opened = False

    def _processes(self) -> anyio.CapacityLimiter:
        """The limiter of the worker processes (``max_processes``), made on first use."""
        if self._limiter is None:
            assert self.max_processes is not None
            self._limiter = anyio.CapacityLimiter(self.max_processes)
        return self._limiter

    def _refuse_callables(self) -> None:
        """On Redis, ``dispatch``/``submit`` refuse: a callable cannot cross processes."""
        message = (
            "Dispatcher.{}: the redis backend runs named tasks only (a callable cannot cross processes); "
            "register the function with @dispatcher.task(name) and call enqueue(name, payload)"
        )

        def dispatch(task: Any, *, timeout: Any = None) -> bool:
            raise TypeError(message.format("dispatch"))

        async def submit(task: Any, *, timeout: Any = None) -> None:
            raise TypeError(message.format("submit"))

        vars(self).update(dispatch=dispatch, submit=submit)

    # -- internals ----------------------------------------------------------------------

    def _check_task_timeout(self, timeout: Any) -> float | None:
        try:
            value: float | None = _check_positive("timeout", timeout, integer=False, allow_none=True)
        except RegistrationError as exc:  # at dispatch time this is a bad argument, not a bad registration
            raise (TypeError if "must be a number" in str(exc) else ValueError)(
                str(exc).replace("Dispatcher: timeout", "Dispatcher.dispatch: timeout")
            ) from None
        self._note_timeout(value)
        return value

    def _unwound(self) -> None:
        """After run() ends: by quit (nothing left) or by cancellation (hand back what is left)."""
        quit_asked = self._state.quitting
        leftover = [task_of(item) for item in self._queue] if not quit_asked else []
        if leftover:
            self._queue.clear()
        if not quit_asked:
            leftover += self._pool.take_queued()
        if leftover:
            self._hand_back(leftover)
            self._log_event("warning", "dispatcher unwound with tasks not run", handed_back=len(leftover))
        self._pool.close()
        self._tg = None
        self._sleepers = 0
        self._update_scale_at()
        # An unwind that cancelled run() closes the dispatcher: nothing will run what comes next.
        self._move(STOPPED, Phase.ENDED if quit_asked else Phase.CLOSED)
        if self._health is not None and self._health.healthy:
            self._health.update(False, "stopped")
        self._loop_thread = self._token = None  # not running: any thread may queue
        waker, self._waker = self._waker, None
        if waker is not None:
            waker.close()
        stopped = self._stopped
        if stopped is not None:
            stopped.set()
