"""App: registration, ``boot()`` / ``serve()`` / ``shutdown()``, ``--help`` and the exit status."""

from __future__ import annotations

import gc
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import anyio
import sniffio
import structlog
from pydantic_settings import BaseSettings

from ._argv import BACKENDS, Backend, BootArgs, read_command_line
from ._boot_failure import BootFailureHook, report_boot_failure
from ._components import DEFAULT, Initializer, Options, RestartPolicy, TimeoutOption, overridden
from ._config import Config
from ._describe import describe
from ._errors import ComponentError, ConfigError, InjectionError, RegistrationError, UnavailableError
from ._health import Health
from ._inject import Injector
from ._lifecycle import STRATEGIES, Runner, Strategy, entries, preflight_all
from ._loading import framework_models, load, log_loaded, reread
from ._logging import make_logger
from ._loopwatch import LoopWatch
from ._machines import MachineService
from ._ops import Operations, OpsSettings, SystemdSettings, parse_addr
from ._registry import Registry
from ._services import PerComponent, ServiceContainer
from ._serving import BindError, TLSError
from ._settings import AppSettings

__all__ = ["App"]

C = TypeVar("C", bound=Initializer)


USER_ERRORS = (BindError, ConfigError, InjectionError, RegistrationError, TLSError, UnavailableError)
"""Errors logged as their message alone: the message says what to fix, a traceback would bury it."""


def _freeze_when_running(event: str, _detail: str) -> None:
    """Once ready, leave what start-up built (modules, settings, components) out of every later GC pass.

    Only under ``boot()``, where the process is the app's: frozen objects are
    never collected by the cyclic collector, which a test suite serving many
    apps in one process would pay for. With the start-up heap out of the
    scans, a collection costs what the requests allocate, not what the app is.
    """
    if event == "running":
        gc.collect()
        gc.freeze()


def _env_prefix(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_").upper() + "_"


class App:
    """An application: register components, then ``boot()`` (blocking) or ``await serve()``.

    ``name`` sets the env prefix (``App("example")`` reads ``EXAMPLE_X``, then
    ``X``). ``logger`` replaces the structlog logger built from settings (tests
    pass ``structlog.get_logger()`` to use ``structlog.testing.capture_logs``);
    ``log_stream`` redirects the built one (default stderr). Signals are handled
    only when serving on the main thread and ``handle_signals`` is true.
    ``ops_addr`` (``host:port``) turns the ops endpoint on by default; the
    ``OPS_ADDR`` setting overrides it (``OPS_ADDR=off`` turns it off).
    ``restart_strategy`` says what restarts with a component whose restart
    policy restarts it: itself (``"one_for_one"``), every component
    (``"one_for_all"``) or it and those started after it (``"rest_for_one"``).
    ``env_fallback=False`` reads only the prefixed names (``EXAMPLE_LOG_LEVEL``,
    never ``LOG_LEVEL``), so a shell's generic variables cannot leak in.
    ``parse_args=False`` leaves the command line to the app: ``boot()`` then
    reads nothing from it (no ``--help``, no ``--backend``, no usage errors).
    """

    def __init__(
        self,
        name: str,
        *,
        env_prefix: str | None = None,
        env_file: str | Path | None = None,
        secrets_dir: str | Path | None = None,
        logger: Any = None,
        log_stream: TextIO | None = None,
        handle_signals: bool = True,
        ops_addr: str | None = None,
        restart_strategy: Strategy = "one_for_one",
        env_fallback: bool = True,
        parse_args: bool = True,
    ) -> None:
        if not isinstance(name, str) or not re.search(r"[0-9A-Za-z]", name):
            raise RegistrationError(f"App(name): a name with at least one letter or digit is required, got {name!r}")
        if env_prefix is not None and not isinstance(env_prefix, str):
            raise RegistrationError(f"App(env_prefix): a string is required, got {env_prefix!r}")
        if ops_addr is not None:
            try:
                parse_addr(ops_addr)
            except (ValueError, AttributeError) as exc:
                raise RegistrationError(f"App(ops_addr): {exc}, got {ops_addr!r}") from None
        for option, value in (("env_fallback", env_fallback), ("parse_args", parse_args)):
            if not isinstance(value, bool):
                raise RegistrationError(f"App({option}): True or False, got {value!r}")
        if restart_strategy not in STRATEGIES:
            raise RegistrationError(
                f"App(restart_strategy): one of {', '.join(map(repr, STRATEGIES))}, got {restart_strategy!r}"
            )
        self._ops_addr = ops_addr
        self._strategy: Strategy = restart_strategy
        self.name = name
        self.config = Config(
            _env_prefix(name) if env_prefix is None else env_prefix,
            env_file=env_file,
            secrets_dir=secrets_dir,
            fallback=env_fallback,
        )
        self._parse_args = parse_args
        self.services = ServiceContainer()
        self.health = Health()
        self._given_logger = logger
        self._log_stream = log_stream
        self._handle_signals = handle_signals
        self._registry = Registry()
        self._injector = Injector(self.services, self.config)
        self._runner: Runner | None = None
        self._state: Literal["new", "serving", "done"] = "new"
        self._early_shutdown = False
        self._hard_exit = False
        self._errors: list[ComponentError] = []
        self._ready_hooks: list[Callable[[], object]] = []
        self._boot_failure_hooks: list[BootFailureHook] = []
        self._reached_running = False
        self._operations: Operations | None = None
        self._settings = AppSettings.model_construct()  # until serve() loads them
        self._machine_settings: Any = None
        # Until serve() builds the configured one: a plain structlog logger, so that a
        # service resolved before boot is never None.
        self.logger: Any = logger if logger is not None else structlog.get_logger().bind(app=name)
        self.services.set("services", self.services)
        self.services.set("config", self.config)
        self.services.set("app_name", name)
        self.services.set("health", PerComponent(self.health.for_component))
        self.services.set("logger", PerComponent(self._component_logger))
        self._machines = MachineService(self.logger)
        self.services.set("machine", PerComponent(self._machines.for_component, release=self._machines.release))

    # -- registration ---------------------------------------------------------------

    def register(
        self,
        component: C,
        *,
        name: str | None = None,
        priority: int = 0,
        start_timeout: TimeoutOption = DEFAULT,
        shutdown_timeout: TimeoutOption = DEFAULT,
        init_timeout: TimeoutOption = DEFAULT,
        finalize_timeout: TimeoutOption = DEFAULT,
        reload_timeout: TimeoutOption = DEFAULT,
        silent_exit: bool = False,
        restart: RestartPolicy = "never",
        max_restarts: int = 3,
        restart_window: float = 5.0,
        backoff: tuple[float, float] = (0.1, 10.0),
    ) -> C:
        """Register an ``Initializer`` or ``Process`` instance; returns it.

        Lower priorities initialise (and become healthy) first and stop last.
        Timeouts are seconds (``reload_timeout`` bounds each ``reload()``);
        ``None`` means no limit, and an omitted one takes the app-wide default
        from settings. ``restart`` (``"never"``,
        ``"on_failure"``, ``"always"``) restarts a failed (or, for ``always``,
        returned) run after an exponential ``backoff`` (initial, cap) with
        jitter; more than ``max_restarts`` restarts within ``restart_window``
        seconds escalate (the app unwinds, status 1). Raises
        ``RegistrationError`` for a non-component, a duplicate name or
        instance, or an invalid option.
        """
        if self._state != "new":
            raise RegistrationError(f"{name or type(component).__name__}: cannot register after the app has started")
        self._registry.add(
            component,
            name,
            priority=priority,
            start_timeout=start_timeout,
            shutdown_timeout=shutdown_timeout,
            init_timeout=init_timeout,
            finalize_timeout=finalize_timeout,
            reload_timeout=reload_timeout,
            silent_exit=silent_exit,
            restart=restart,
            max_restarts=max_restarts,
            restart_window=restart_window,
            backoff=backoff,
        )
        return component

    def on_ready(self, hook: Callable[[], object]) -> Callable[[], object]:
        """Call ``hook()`` on the loop thread once every priority group is up and healthy.

        For readiness signals (``sd_notify``, a ready file, a test that waits
        for boot). A hook that raises is an error: the app unwinds, status 1.
        Returns the hook, so it can be used as a decorator.
        """
        if not callable(hook):
            raise RegistrationError(f"on_ready() takes a callable, got {hook!r}")
        self._ready_hooks.append(hook)
        return hook

    def on_boot_failure(self, hook: BootFailureHook) -> BootFailureHook:
        """Call ``hook(errors)`` once, after the unwind, when the boot fails; returns the hook.

        A boot fails when ``serve()`` ends with errors before the app was
        ever running: invalid settings, an injection, a preflight or an
        ``init`` that failed, a start timeout (never a signal or
        ``shutdown()`` during boot). ``errors`` is ``app.errors``. The hooks
        run after the components' own ``boot_failed`` (in registration order),
        in the order they were added; ``async def`` is awaited, plain ``def``
        called on the loop thread, each bounded by ``SHUTDOWN_TIMEOUT``; one
        that raises is logged. Usable as a decorator.
        """
        if not callable(hook):
            raise RegistrationError(f"on_boot_failure() takes a callable, got {hook!r}")
        self._boot_failure_hooks.append(hook)
        return hook

    # -- running --------------------------------------------------------------------

    @property
    def registrations(self) -> tuple[tuple[Initializer, Options], ...]:
        """Every registered component with its options, in registration order."""
        return tuple(self._registry.items)

    @property
    def ops_address(self) -> tuple[str, int] | None:
        """Where the ops endpoint listens while serving (the real port for ``OPS_ADDR=...:0``), else None."""
        return None if self._operations is None else self._operations.address

    @property
    def errors(self) -> tuple[ComponentError, ...]:
        """Every error of the last ``serve()``, in the order they happened."""
        return tuple(self._errors)

    def settings_models(self) -> dict[type[BaseSettings], list[str]]:
        """Every settings model the app reads, the framework's first, each with the names of its readers."""
        users = framework_models()
        for component, options in self._registry.items:
            for model in self._injector.settings_models(component):
                users.setdefault(model, []).append(options.name)
        return users

    def describe(self) -> str:
        """The ``--help`` text: every setting the registered components read."""
        return describe(self.name, self.config, self.settings_models())

    def boot(self, argv: Sequence[str] | None = None, *, backend: Backend | None = None) -> int:
        """Run the app to completion (blocking) and return the exit status: 0 clean, 1 on any failure.

        ``argv`` (default ``sys.argv[1:]``) may hold ``--help`` / ``-h`` (print
        every setting and return 0 without starting anything) and ``--backend
        asyncio|trio``; anything else is a usage error, written to stderr with
        status 2 and nothing started (unless ``App(parse_args=False)``: then
        ``argv`` is not read at all). The event loop is ``backend`` if given,
        else ``--backend``, else the ``BACKEND`` setting (``<PREFIX>BACKEND``),
        else asyncio.
        """
        if backend is not None and backend not in BACKENDS:
            raise RegistrationError(f"boot(backend=...): 'asyncio' or 'trio', got {backend!r}")
        asked = BootArgs()
        if self._parse_args:
            read = read_command_line(self.name, sys.argv[1:] if argv is None else list(argv), self.describe)
            if isinstance(read, int):
                return read  # --help printed, or a usage error
            asked = read
        chosen = backend or asked.backend or self._backend_setting()
        self._hard_exit = True  # the process is ours: a forced shutdown may end it
        try:
            return anyio.run(self.serve, backend=chosen)
        except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
            sys.stderr.write(f"{self.name}: interrupted during start-up\n")
            return 1

    def _backend_setting(self) -> Backend:
        """The ``BACKEND`` setting; asyncio when the app's settings are invalid (``serve()`` then reports them)."""
        try:
            return self.config.load(AppSettings).backend  # cached: serve() does not read it again
        except ConfigError:
            return "asyncio"

    async def preflight(self) -> list[ComponentError]:
        """Run every component's ``preflight`` and release what it took (its ``finalize``); the problems found.

        What ``nacelle-py check`` does to find a taken port or an unreachable
        server without initialising anything. Each preflight is bounded by the
        component's ``start_timeout``, each finalize by its ``finalize_timeout``.
        ``ConfigError`` if the settings are invalid (a preflight reads them).
        """
        if self._state != "new":
            raise RuntimeError(f"{self.name}: preflight() is for an app that has not served")
        settings = self.config.load(AppSettings)
        if self._given_logger is None:  # what the preflights log goes where serve() would send it (stderr)
            self.logger = make_logger(self.name, settings, self._log_stream)
        return await preflight_all(self._registry.items, self._injector, settings)

    def shutdown(self) -> None:
        """Request a graceful unwind; safe from any task or thread, and before or after serving."""
        if self._runner is None:
            self._early_shutdown = True
        else:
            self._runner.request_stop("shutdown() called")

    def reload(self) -> None:
        """Do what SIGHUP does: re-read and validate the settings, then call every component's ``reload()``.

        Safe from any task or thread; returns at once (the reload runs on the
        loop; its log lines say how it went). A request while booting waits
        until the app is running, requests during a reload make one more
        reload after it, and a request while stopping (or when not serving)
        is ignored with a log line. See docs/operations.md.
        """
        if self._runner is None or self._state != "serving":
            self.logger.info("reload ignored: the app is not serving")
        else:
            self._runner.request_reload("reload() called")

    def dump(self) -> None:
        """Do what SIGUSR1 does: log every component's state and every task's and thread's stack.

        Safe from any task or thread (the dump is written on the loop); it
        stops nothing. Ignored with a log line when the app is not serving.
        """
        if self._runner is None or self._state != "serving":
            self.logger.info("dump ignored: the app is not serving")
        else:
            self._runner.request_dump("dump() called")

    async def serve(self) -> int:
        """Run the whole lifecycle in the current event loop; returns the exit status.

        Works on asyncio and trio. Signals (SIGINT/SIGTERM stop, SIGHUP
        reloads, SIGUSR1 dumps) are handled when running on the main thread
        and ``handle_signals`` is true. ``errors`` lists every failure afterwards.
        """
        if self._state != "new":
            raise RuntimeError(f"{self.name}: an App serves once; build a new App to serve again")
        self._state = "serving"
        try:
            status = await self._serve_steps()
            if status and not self._reached_running:
                await self._boot_failed()
            return status
        finally:
            self.services.watch_undeclared(None)
            self._state = "done"

    # -- the steps of serve() ---------------------------------------------------------

    async def _serve_steps(self) -> int:
        """Settings, runner, ops endpoint, the lifecycle; the exit status."""
        if not self._load_settings():
            return 1
        self.services.watch_undeclared(self._declared_services(), self._undeclared_service)
        runner = self._build_runner()
        runner.observe(self._observe_running)
        operations = self._prepare_operations()
        if operations is None:
            return 1
        if self._hard_exit and self._settings.gc_freeze:
            runner.observe(_freeze_when_running)
        started = anyio.current_time()
        await self._run(runner, operations)
        return self._exit_status(started)

    def _observe_running(self, event: str, _detail: str) -> None:
        if event == "running":
            self._reached_running = True

    async def _boot_failed(self) -> None:
        """Tell the components' ``boot_failed`` and the ``on_boot_failure`` hooks, once (see ``_boot_failure``)."""
        hooks: list[tuple[str, BootFailureHook]] = []
        for component, options in self._registry.items:
            method = overridden(component, "boot_failed")
            if method is not None:
                hooks.append((options.name, method))
        hooks.extend((self.name, hook) for hook in self._boot_failure_hooks)
        if hooks:
            await report_boot_failure(hooks, self._errors, self._settings.shutdown_timeout, self.logger)

    def _declared_services(self) -> set[str]:
        """The keys set before serving and those the components declare in ``provides``."""
        return set(self.services.keys()) | self._registry.declared_services()

    def _undeclared_service(self, key: str) -> None:
        self.logger.warning(
            "service set that no component declares; nacelle-py check cannot see it",
            key=key,
            hint=f"add {key!r} to the provides of the component that sets it: provides = ({key!r},)",
        )

    def _build_runner(self) -> Runner:
        """The runner over every registered component, with the bounds resolved from settings."""
        return Runner(
            app_name=self.name,
            entries=entries(self._registry.items, self._settings),
            injector=self._injector,
            health=self.health,
            logger=self.logger,
            handle_signals=self._handle_signals and threading.current_thread() is threading.main_thread(),
            errors=self._errors,
            on_error=self._log_error,
            on_ready=tuple(self._ready_hooks),
            hard_exit=self._hard_exit,
            release=self.services.release,
            forget=self.services.forget,
            strategy=self._strategy,
            reread=self._reread,
        )

    def _prepare_operations(self) -> Operations | None:
        """The ops endpoint, bound before anything starts; None (and the error logged) if it cannot be."""
        ops_settings = self.config.load(OpsSettings)
        if "addr" not in ops_settings.model_fields_set and self._ops_addr is not None:
            ops_settings = ops_settings.model_copy(update={"addr": self._ops_addr})
        operations = Operations(ops_settings, self.config.load(SystemdSettings), self.logger)
        try:
            operations.prepare()
        except Exception as exc:  # a taken OPS_ADDR, a missing extra
            operations.close()
            self._errors.append(ComponentError("ops", "start", exc, str(exc)))
            self._log_error(self._errors[-1])
            return None
        return operations

    async def _run(self, runner: Runner, operations: Operations) -> None:
        """The lifecycle itself, inside the app's machine tree and the ops endpoint."""
        self._runner = runner
        self._operations = operations
        self.logger.info("app starting", components=len(runner.entries), backend=sniffio.current_async_library())
        watch = LoopWatch(self._settings.loop_block_warn, self.logger)
        async with watch.running():  # from before the first init to after the last finalize
            await self._machines.open(self._machine_settings, self.logger)
            try:
                async with operations.running(
                    runner, self.health, self._machines.stats, loop_blocked=lambda: watch.blocked
                ):
                    await runner.run(stop_already_requested=self._early_shutdown)
            finally:
                self._operations = None  # ops_address: None once serving ended
                await self._machines.close()  # the root's task group: closed where it was opened

    def _exit_status(self, started: float) -> int:
        """0 if nothing failed, else 1; logged with the time served."""
        status = 1 if self._errors else 0
        ms = round((anyio.current_time() - started) * 1000, 3)
        if status:
            self.logger.error("app stopped with errors", errors=len(self._errors), status=status, ms=ms)
        else:
            self.logger.info("app stopped", status=status, ms=ms)
        return status

    # -- internals ------------------------------------------------------------------

    def _component_logger(self, name: str | None) -> Any:
        return self.logger if name is None else self.logger.bind(component=name)

    def _log_error(self, error: ComponentError) -> None:
        cause = error.cause
        kwargs: dict[str, Any] = {"component": error.component, "operation": error.operation}
        # A user's mistake (a setting, a taken port, a bad certificate) is its message; anything else has its traceback.
        if cause is not None and not isinstance(cause, USER_ERRORS):
            kwargs["exc_info"] = cause
        self.logger.error(str(error), **kwargs)

    def _load_settings(self) -> bool:
        """Load every settings model before any init; False (and logged errors) if any is invalid."""
        loaded = load(self.config, self.settings_models())
        if self._given_logger is None:
            self.logger = make_logger(self.name, loaded.log_settings, self._log_stream)
        else:
            self.logger = self._given_logger.bind(app=self.name)
        self._settings, self._machine_settings = loaded.settings, loaded.machine
        if loaded.problems:
            error = ConfigError(loaded.problems)
            self._errors.append(ComponentError(self.name, "config", error, str(error)))
            self._log_error(self._errors[-1])
            return False
        log_loaded(self.config, self.logger)
        return True

    def _reread(self) -> list[str]:
        """A reload's first step (see ``_loading.reread``)."""
        return reread(self.config, self.logger)
