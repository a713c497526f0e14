"""Components with scripted faults, and the lifecycle invariants checked on what they record.

Shared by tests/test_restart.py and tests/test_lifecycle_faults.py. Public API only.

A ``Lab`` makes the components of one test; they share its ``Recorder`` (a ``Trace``), its
``Activity`` counters and its release switch. Every lifecycle call of a component is
recorded as ``<name>#<incarnation>.<operation>`` when it begins, and then as one of
``.ok`` (returned), ``.fail`` (raised on purpose), ``.hang`` (hangs on purpose),
``.return`` (a ``run`` returning by itself) or ``.cancelled`` (an ``async def`` cancelled);
``<name>#<incarnation>.health.hang`` says that this incarnation will never report its health
key healthy.
The incarnation counts the ``init`` calls: a component restarted once records ``#2`` events.

Each operation is written once, as a generator of the waits it needs; an ``async def``
driver awaits them on the loop, a plain ``def`` driver blocks on them in the runner's
worker thread. So the async and the threaded variants of a component do the same thing.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

import anyio

from nacelle_py import App, Health, HealthComponent, Initializer, Inject, Process, ServiceError
from nacelle_py.testing import Trace

__all__ = [
    "Activity",
    "Boom",
    "Fault",
    "Lab",
    "Mode",
    "Recorder",
    "check_finalized_once",
    "check_runs_before_finalize",
    "check_stops_follow_runs",
    "incarnations",
    "parse",
    "serve_until",
]


class Boom(Exception):
    """What a component raises on purpose."""


class Mode(StrEnum):
    """What a faulty operation does."""

    RAISE = "raise"  # raises Boom
    HANG = "hang"  # never returns (async: until cancelled; plain def: until the lab is released)
    RETURN = "return"  # run only: returns by itself, without being stopped
    PAUSE = "pause"  # waits for ``after``, then carries on as if nothing were wrong


@dataclass(frozen=True)
class Fault:
    """A fault of one operation, in incarnations ``since``..``upto`` (``upto=None``: and every later one).

    ``after`` delays the fault: seconds, or an ``anyio.Event`` (``async def`` components
    only). A ``run`` that is stopped during the delay returns cleanly instead.
    ``health`` as the operation means: the component's health key is never reported healthy.
    """

    mode: Mode
    upto: int | None = 1
    after: float | anyio.Event | None = None
    since: int = 1

    def hits(self, incarnation: int) -> bool:
        return self.since <= incarnation and (self.upto is None or incarnation <= self.upto)


class Recorder(Trace):
    """A ``Trace`` that also remembers when each event was first recorded and runs hooks on events."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._times: dict[str, float] = {}
        self._hooks: dict[str, list[Callable[[], object]]] = {}

    def add(self, event: str) -> None:
        super().add(event)
        with self._lock:
            self._times.setdefault(event, time.monotonic())
            hooks = self._hooks.pop(event, [])
        for hook in hooks:
            hook()

    def on(self, event: str, hook: Callable[[], object]) -> None:
        """Call ``hook()`` once, right after ``event`` is first recorded (on the recording thread)."""
        with self._lock:
            self._hooks.setdefault(event, []).append(hook)

    def time(self, event: str) -> float:
        """When ``event`` was first recorded (``time.monotonic()``)."""
        with self._lock:
            return self._times[event]

    async def wait_for(self, event: str, limit: float = 5.0) -> None:
        """Wait until ``event`` is recorded; fail the test after ``limit`` seconds."""
        with anyio.fail_after(limit):
            while event not in self:
                await anyio.sleep(0.002)


class Activity:
    """How many lifecycle calls of a lab's components are in progress, and their release switch.

    ``release`` ends the plain ``def`` calls that hang on purpose (a thread cannot be
    cancelled); they then return quietly without recording anything.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_async = 0
        self.in_threads = 0
        self.release = threading.Event()

    @contextmanager
    def call(self, threaded: bool) -> Iterator[None]:
        with self._lock:
            if threaded:
                self.in_threads += 1
            else:
                self.in_async += 1
        try:
            yield
        finally:
            with self._lock:
                if threaded:
                    self.in_threads -= 1
                else:
                    self.in_async -= 1

    async def drain_threads(self, limit: float = 3.0) -> None:
        """Release the hanging plain ``def`` calls and wait until every thread's call has returned."""
        self.release.set()
        with anyio.fail_after(limit):
            while self.in_threads:
                await anyio.sleep(0.005)


# -- the waits an operation asks its driver for ---------------------------------------------------


class _Released(Exception):
    """A plain ``def`` call hanging on purpose was released: it returns without recording."""


@dataclass(frozen=True)
class _Checkpoint:
    """Yield to the loop once (async); nothing (threads)."""


@dataclass(frozen=True)
class _Forever:
    """Never return: until cancelled (async) or released (threads)."""


@dataclass(frozen=True)
class _Delay:
    """Wait ``after`` (seconds, or an anyio.Event)."""

    after: float | anyio.Event


@dataclass(frozen=True)
class _Stopped:
    """Wait until ``stop()`` fired this incarnation's signal, at most ``after``; the answer: whether it did."""

    incarnation: int
    after: float | anyio.Event | None = None


_Wait = _Checkpoint | _Forever | _Delay | _Stopped
Steps = Generator[_Wait, bool | None, None]


class _Actor:
    """The behaviour shared by every lab component: scripted operations recorded on the trace.

    Processes (and components with a ``health`` fault) register a health key named after
    the component in ``init``; a process reports it healthy as its ``run`` begins. A ``run``
    creates its stop signal afresh as it begins (state set up in ``run``, as many real
    processes do), so a ``stop()`` called before ``run()`` began is not seen by that run.
    """

    health: Health = Inject("health")
    is_process = False

    def __init__(self, lab: Lab, name: str, faults: Mapping[str, Fault]) -> None:
        self.trace = lab.trace
        self.activity = lab.activity
        self.name = name
        self.faults = dict(faults)
        self.incarnation = 0
        self.flag: HealthComponent | None = None
        self._lock = threading.Lock()
        self._signals: dict[int, Any] = {}

    # -- helpers for the steps

    def _mark(self, incarnation: int, what: str) -> None:
        self.trace.add(f"{self.name}#{incarnation}.{what}")

    def _fault(self, op: str, incarnation: int) -> Fault | None:
        fault = self.faults.get(op)
        return fault if fault is not None and fault.hits(incarnation) else None

    def _register_health(self) -> None:
        """Register the component's key; a restarted component may find its key still registered."""
        try:
            self.flag = self.health.register(self.name)
        except ServiceError:
            self.flag = self.health.get(self.name)

    def _faulty(self, op: str, incarnation: int) -> Steps:
        """The fault of ``op`` in this incarnation, if any: raise, hang or pause."""
        fault = self._fault(op, incarnation)
        if fault is None:
            return
        if fault.after is not None:
            yield _Delay(fault.after)
        if fault.mode is Mode.RAISE:
            self._mark(incarnation, f"{op}.fail")
            raise Boom(f"{self.name} {op} boom #{incarnation}")
        if fault.mode is Mode.HANG:
            self._mark(incarnation, f"{op}.hang")
            yield _Forever()

    def _new_signal(self) -> Any:
        raise NotImplementedError

    # -- the operations, each once

    def _init_steps(self) -> Steps:
        with self._lock:
            self.incarnation += 1
            n = self.incarnation
        self._mark(n, "init")
        yield _Checkpoint()
        yield from self._faulty("init", n)
        if self.is_process or "health" in self.faults:
            self._register_health()
            if self._fault("health", n) is not None:
                self._mark(n, "health.hang")  # this incarnation never reports its key healthy
        self._mark(n, "init.ok")

    def _run_steps(self) -> Steps:
        n = self.incarnation
        with self._lock:  # begun and stoppable at once: stop() either precedes this or sees the signal
            self._mark(n, "run")
            self._signals[n] = self._new_signal()
        yield _Checkpoint()
        if self._fault("health", n) is None and self.flag is not None:
            self.flag.update(True)
        fault = self._fault("run", n)
        if fault is None or fault.mode is Mode.PAUSE:
            yield _Stopped(n)
            self._mark(n, "run.ok")
            return
        if fault.after is not None:
            if (yield _Stopped(n, fault.after)):
                self._mark(n, "run.ok")
                return
        if fault.mode is Mode.RETURN:
            self._mark(n, "run.return")
            return
        if fault.mode is Mode.RAISE:
            self._mark(n, "run.fail")
            raise Boom(f"{self.name} run boom #{n}")
        self._mark(n, "run.hang")
        yield _Forever()

    def _stop_steps(self) -> Steps:
        n = self.incarnation
        self._mark(n, "stop")
        yield from self._faulty("stop", n)
        with self._lock:
            signal = self._signals.get(n)
        if signal is not None:
            signal.set()
        self._mark(n, "stop.ok")

    def _finalize_steps(self) -> Steps:
        n = self.incarnation
        self._mark(n, "finalize")
        yield _Checkpoint()
        yield from self._faulty("finalize", n)
        self._mark(n, "finalize.ok")


class _AsyncActor(_Actor):
    """``async def`` lifecycle methods: the steps awaited on the loop."""

    def _new_signal(self) -> anyio.Event:
        return anyio.Event()

    async def _drive(self, op: str, steps: Steps) -> None:
        with self.activity.call(threaded=False):
            try:
                wait = next(steps)
                while True:
                    wait = steps.send(await self._wait(wait))
            except StopIteration:
                return
            except anyio.get_cancelled_exc_class():
                self._mark(self.incarnation, f"{op}.cancelled")
                steps.close()
                raise

    async def _wait(self, wait: _Wait) -> bool | None:
        if isinstance(wait, _Checkpoint):
            await anyio.sleep(0)
        elif isinstance(wait, _Forever):
            await anyio.sleep_forever()
        elif isinstance(wait, _Delay):
            await _until(wait.after)
        else:
            signal = self._signals[wait.incarnation]
            if wait.after is None:
                await signal.wait()
            else:
                await _first(signal, wait.after)
            return bool(signal.is_set())
        return None

    async def init(self) -> None:
        await self._drive("init", self._init_steps())

    async def finalize(self) -> None:
        await self._drive("finalize", self._finalize_steps())


async def _until(after: float | anyio.Event) -> None:
    if isinstance(after, anyio.Event):
        await after.wait()
    else:
        await anyio.sleep(after)


async def _first(signal: anyio.Event, after: float | anyio.Event) -> None:
    """Wait until ``signal`` is set or ``after`` has passed, whichever comes first."""
    async with anyio.create_task_group() as tg:

        async def then_cancel(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        tg.start_soon(then_cancel, signal.wait)
        tg.start_soon(then_cancel, partial(_until, after))


class _ThreadedActor(_Actor):
    """Plain ``def`` lifecycle methods: the same steps, blocking in the runner's worker thread."""

    POLL = 0.005

    def _new_signal(self) -> threading.Event:
        return threading.Event()

    def _drive(self, steps: Steps) -> None:
        with self.activity.call(threaded=True):
            try:
                wait = next(steps)
                while True:
                    wait = steps.send(self._wait(wait))
            except StopIteration:
                return
            except _Released:
                steps.close()

    def _wait(self, wait: _Wait) -> bool | None:
        release = self.activity.release
        if isinstance(wait, _Checkpoint):
            return None
        if isinstance(wait, _Forever):
            release.wait()
            raise _Released
        if isinstance(wait, _Delay):
            assert not isinstance(wait.after, anyio.Event), "plain def components wait seconds only"
            if release.wait(wait.after):
                raise _Released
            return None
        signal = self._signals[wait.incarnation]
        assert not isinstance(wait.after, anyio.Event), "plain def components wait seconds only"
        deadline = None if wait.after is None else time.monotonic() + wait.after
        while not signal.wait(self.POLL):
            if release.is_set():
                raise _Released
            if deadline is not None and time.monotonic() >= deadline:
                break
        return bool(signal.is_set())

    def init(self) -> None:
        self._drive(self._init_steps())

    def finalize(self) -> None:
        self._drive(self._finalize_steps())


# The component classes. A process without ``stop()`` is stopped by cancelling its run.


class AsyncInitializer(_AsyncActor, Initializer):
    pass


class ThreadedInitializer(_ThreadedActor, Initializer):
    pass


class AsyncProcessWithoutStop(_AsyncActor, Process):
    is_process = True

    async def run(self) -> None:
        await self._drive("run", self._run_steps())


class AsyncProcess(AsyncProcessWithoutStop):
    async def stop(self) -> None:
        await self._drive("stop", self._stop_steps())


class ThreadedProcessWithoutStop(_ThreadedActor, Process):
    is_process = True

    def run(self) -> None:
        self._drive(self._run_steps())


class ThreadedProcess(ThreadedProcessWithoutStop):
    def stop(self) -> None:
        self._drive(self._stop_steps())


class Lab:
    """The trace, counters and components of one test (or one generated app)."""

    def __init__(self) -> None:
        self.trace = Recorder()
        self.activity = Activity()

    def initializer(self, name: str, *, threaded: bool = False, **faults: Fault) -> Initializer:
        """An initializer (``init`` and ``finalize``) with the given faults by operation."""
        cls = ThreadedInitializer if threaded else AsyncInitializer
        return cls(self, name, faults)

    def process(self, name: str, *, threaded: bool = False, has_stop: bool = True, **faults: Fault) -> Process:
        """A process (``init``, ``run``, ``finalize``, and ``stop`` unless ``has_stop=False``)."""
        if threaded:
            cls: type[_Actor] = ThreadedProcess if has_stop else ThreadedProcessWithoutStop
        else:
            cls = AsyncProcess if has_stop else AsyncProcessWithoutStop
        component = cls(self, name, faults)
        assert isinstance(component, Process)
        return component

    def shutdown(self, app: App) -> None:
        """Record ``shutdown`` on the trace, then ask the app to unwind."""
        self.trace.add("shutdown")
        app.shutdown()


async def serve_until(app: App, lab: Lab, event: str | None = None, *, limit: float = 10.0) -> int:
    """Serve ``app``; once ``event`` is recorded (if given), record ``shutdown`` and shut it down.

    Bounded by ``limit``; returns the exit status.
    """
    status: int | None = None
    with anyio.fail_after(limit):
        async with anyio.create_task_group() as tg:

            async def stopper() -> None:
                assert event is not None
                await lab.trace.wait_for(event, limit)
                lab.shutdown(app)

            if event is not None:
                tg.start_soon(stopper)
            status = await app.serve()
            tg.cancel_scope.cancel()
    assert status is not None
    return status


# -- reading a trace --------------------------------------------------------------------------------

EVENT = re.compile(r"^(?P<name>[^#]+)#(?P<n>\d+)\.(?P<op>init|health|run|stop|finalize)(?:\.(?P<outcome>\w+))?$")


@dataclass(frozen=True)
class Event:
    index: int
    name: str
    incarnation: int
    op: str
    outcome: str | None  # None: the call began

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.incarnation)


def parse(events: Sequence[str]) -> list[Event]:
    """The lab events of a trace (other markers, such as ``shutdown``, are left out)."""
    parsed = []
    for index, text in enumerate(events):
        match = EVENT.match(text)
        if match:
            parsed.append(Event(index, match["name"], int(match["n"]), match["op"], match["outcome"]))
    return parsed


def incarnations(events: Sequence[str], name: str) -> int:
    """How many times ``name``'s ``init`` began."""
    return sum(1 for e in parse(events) if e.name == name and e.op == "init" and e.outcome is None)


def _find(parsed: list[Event], op: str, outcome: str | None) -> dict[tuple[str, int], list[Event]]:
    found: dict[tuple[str, int], list[Event]] = {}
    for e in parsed:
        if e.op == op and e.outcome == outcome:
            found.setdefault(e.key, []).append(e)
    return found


def check_finalized_once(events: Sequence[str]) -> list[str]:
    """Every incarnation whose ``init`` succeeded is finalized exactly once; no other is finalized."""
    parsed = parse(events)
    inited = _find(parsed, "init", "ok")
    finalized = _find(parsed, "finalize", None)
    problems = []
    for key in inited:
        count = len(finalized.get(key, []))
        if count != 1:
            problems.append(f"{key[0]}#{key[1]}: init succeeded, finalized {count} times")
        elif finalized[key][0].index < inited[key][0].index:
            problems.append(f"{key[0]}#{key[1]}: finalized before its init succeeded")
    for key in finalized.keys() - inited.keys():
        problems.append(f"{key[0]}#{key[1]}: finalized without a successful init")
    return problems


def check_stops_follow_runs(events: Sequence[str]) -> list[str]:
    """``stop`` is called at most once per incarnation, and only after that incarnation's ``run`` began."""
    parsed = parse(events)
    runs = _find(parsed, "run", None)
    problems = []
    for key, stops in _find(parsed, "stop", None).items():
        if len(stops) > 1:
            problems.append(f"{key[0]}#{key[1]}: stop called {len(stops)} times")
        if key not in runs or runs[key][0].index > stops[0].index:
            problems.append(f"{key[0]}#{key[1]}: stop called before its run began")
    return problems


def check_runs_before_finalize(events: Sequence[str], async_names: set[str]) -> list[str]:
    """An ``async def`` run has ended (returned, raised or been cancelled) before its finalize begins."""
    parsed = parse(events)
    ends: dict[tuple[str, int], int] = {}
    for e in parsed:
        if e.op == "run" and e.outcome in ("ok", "return", "fail", "cancelled"):
            ends.setdefault(e.key, e.index)
    runs = _find(parsed, "run", None)
    problems = []
    for key, finals in _find(parsed, "finalize", None).items():
        if key[0] not in async_names or key not in runs:
            continue
        if key not in ends or ends[key] > finals[0].index:
            problems.append(f"{key[0]}#{key[1]}: finalized while its run was still going")
    return problems
