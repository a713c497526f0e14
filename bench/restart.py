"""Restarting failed processes: the latency of one restart against a fresh boot, and a soak for leaks.

Needs the restart options (``App(restart_strategy=...)``,
``App.register(restart=..., max_restarts=..., restart_window=...,
backoff=...)``); a nacelle_py without them makes this script stop at once
with a message saying so (exit status 2).

1. Latency. One no-op process registered with ``restart="on_failure"``,
   ``backoff=(1e-6, 1e-6)`` and an intensity it never reaches. Its ``init``
   claims a health key; its ``run`` marks the key healthy, waits until told
   to fail, records ``time.perf_counter()`` and raises. A health
   subscription records the moment the app is healthy again (the restarted
   run has marked the key healthy). That span is the restart: the error
   recorded and logged, the key marked unhealthy ("restarting", which is
   checked and counted), the backoff, finalize, injection, init and the new
   run up to its first health update. Against it: a fresh ``App`` with the
   same one process, timed from ``serve()`` to the same health update
   (building the App and registering are outside the timing, as in
   ``boot.py``), then shut down. The two alternate in this process (the
   restarting app stays up while a fresh one boots and unwinds beside it),
   five warm-up rounds first; the figures are medians and the ratio is
   restart / fresh boot.
2. Soak. 200 processes in 4 priorities with ``restart="always"``, an
   intensity never reached (10**9 restarts per 1 s window) and
   ``backoff=(0.001, 0.05)``; each claims a health key, marks it healthy and,
   once the app is ready, sleeps 50 to 500 ms (uniformly at random) and then
   raises or returns (even odds), for ``--seconds`` (60 by default). Every
   second: the resident set (``VmRSS`` in ``/proc/self/status``) and the
   open file descriptors (``/proc/self/fd``). Printed: the samples, and the
   least-squares slope of each after a warm-up (the first 10 s, or the first
   third of a shorter run) in KB/s and fds/s; the goal is flat. Also the
   restarts done (``run()`` calls after each process's first), set against
   ``nacelle_component_restarts_total`` scraped once from the ops endpoint's
   ``/metrics`` at the end (when the http and metrics extras are installed),
   and how many errors ``app.errors`` holds by then.

Logging is at warning level to a discarded stream, so each failure still
writes its error line with the traceback, as it would in production; JSON by
default (``--log-encoding console`` renders the traceback for a terminal,
with rich when it is installed, which costs far more).

    python bench/restart.py [--backend asyncio|trio] [--seconds 60] [--restarts 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import random
import statistics
import sys
import time
from typing import Any, NoReturn

import anyio

from nacelle_py import App, Health, HealthComponent, Inject, Process, RegistrationError, ServiceError

ENV_PREFIX = "BENCH_RESTART_"
LATENCY_WARMUP = 5
SOAK_PROCESSES = 200
SOAK_PRIORITIES = 4
SOAK_WARMUP = 10.0
RECOVERY_TIMEOUT = 10.0

LATENCY_OPTIONS: dict[str, Any] = {
    "restart": "on_failure",
    "max_restarts": 10**9,
    "restart_window": 60.0,
    "backoff": (1e-6, 1e-6),
}
SOAK_OPTIONS: dict[str, Any] = {
    "restart": "always",
    "max_restarts": 10**9,
    "restart_window": 1.0,
    "backoff": (0.001, 0.05),
}


class Discard(io.StringIO):
    """A log stream that drops what it is given (rendering still happens): no growth in a long soak."""

    def write(self, text: str) -> int:
        return len(text)


DISCARD = Discard()


class PlannedFailure(Exception):
    """What the processes raise on purpose."""


class BenchError(Exception):
    """The measurement cannot go on; the message says why."""


def feature_missing(what: str, exc: BaseException) -> NoReturn:
    sys.stderr.write(
        f"bench/restart.py: {what} rejected the restart options ({type(exc).__name__}: {exc}).\n"
        "This script needs the restart feature: App(name, restart_strategy=...) and "
        "App.register(..., restart=..., max_restarts=..., restart_window=..., backoff=...).\n"
    )
    sys.exit(2)


def new_app(name: str, *, ops_addr: str | None = None) -> App:
    try:
        return App(
            name,
            env_prefix=ENV_PREFIX,
            restart_strategy="one_for_one",
            handle_signals=False,
            log_stream=DISCARD,
            ops_addr=ops_addr,
        )
    except (TypeError, RegistrationError) as exc:
        feature_missing("App()", exc)


def register(app: App, component: Process, *, name: str, priority: int, options: dict[str, Any]) -> None:
    try:
        app.register(component, name=name, priority=priority, **options)
    except (TypeError, RegistrationError) as exc:
        feature_missing("App.register", exc)


class _Check(Process):
    async def run(self) -> None:
        pass


def check_feature() -> None:
    """Stop at once, before any timing, if this nacelle_py has no restart options."""
    app = new_app("check")
    for i, options in enumerate((LATENCY_OPTIONS, SOAK_OPTIONS)):
        register(app, _Check(), name=f"check-{i}", priority=0, options=options)


def claim(health: Health, key: str) -> HealthComponent:
    """The health key, registered on the first init; a restart's init finds it still there."""
    try:
        return health.register(key)
    except ServiceError:
        return health.get(key)


# -- 1. latency -------------------------------------------------------------------------


class Probe:
    """Times one failure (or one boot) to the moment the app is healthy again."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.fail = anyio.Event()  # set to make the process raise
        self.wake = anyio.Event()  # set on recovery, or when the app stops serving
        self.started_at: float | None = None
        self.recovered_at: float | None = None
        self.reasons: list[str | None] = []  # the reasons the key was unhealthy for, during this span
        self.stopped = False
        health.subscribe(self.changed)

    def start(self) -> None:
        """Begin a span: from now until the app is healthy."""
        self.started_at = time.perf_counter()
        self.recovered_at = None
        self.reasons = []

    def changed(self, component: HealthComponent) -> None:
        if self.started_at is None or self.recovered_at is not None:
            return
        if not component.healthy:
            self.reasons.append(component.reason)
        elif self.health.healthy:
            self.recovered()

    def recovered(self) -> None:
        if self.started_at is not None and self.recovered_at is None and self.health.healthy:
            self.recovered_at = time.perf_counter()
            self.wake.set()

    def arm(self) -> anyio.Event:
        """The event the running process waits on; fresh ones for the run that replaces it."""
        fail = self.fail
        self.fail = anyio.Event()
        self.wake = anyio.Event()
        return fail

    async def wait(self, app: App, what: str) -> float:
        with anyio.move_on_after(RECOVERY_TIMEOUT):
            await self.wake.wait()
        if self.recovered_at is None or self.started_at is None:
            state = "stopped serving" if self.stopped else f"not healthy after {RECOVERY_TIMEOUT:g} s"
            last = f"; last error: {app.errors[-1]}" if app.errors else ""
            raise BenchError(f"{what}: the app {state} (unhealthy: {app.health.unhealthy()}){last}")
        return self.recovered_at - self.started_at


class Flaky(Process):
    """A no-op process that fails when its probe says so."""

    health: Health = Inject("health")

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    async def init(self) -> None:
        self.ok = claim(self.health, "flaky")

    async def run(self) -> None:
        probe = self.probe
        fail = probe.fail
        self.ok.update(True)
        probe.recovered()  # only matters if the key was never marked unhealthy
        await fail.wait()
        probe.start()
        raise PlannedFailure("told to fail")


async def serve_probed(app: App, probe: Probe) -> None:
    try:
        await app.serve()
    finally:
        probe.stopped = True
        probe.wake.set()


async def fresh_boot() -> float:
    app = new_app("fresh")
    probe = Probe(app.health)
    register(app, Flaky(probe), name="flaky", priority=0, options=LATENCY_OPTIONS)
    async with anyio.create_task_group() as tg:
        probe.start()
        tg.start_soon(serve_probed, app, probe)
        seconds = await probe.wait(app, "fresh boot")
        app.shutdown()
    return seconds


async def latency(restarts: int) -> None:
    app = new_app("restarting")
    probe = Probe(app.health)
    register(app, Flaky(probe), name="flaky", priority=0, options=LATENCY_OPTIONS)
    restart_times: list[float] = []
    boot_times: list[float] = []
    marked_restarting = 0
    async with anyio.create_task_group() as tg:
        probe.start()
        tg.start_soon(serve_probed, app, probe)
        await probe.wait(app, "first boot")
        for round_ in range(-LATENCY_WARMUP, restarts):
            await anyio.sleep(0.005)  # let the runner settle after the last recovery
            probe.arm().set()
            seconds = await probe.wait(app, f"restart {round_ + LATENCY_WARMUP + 1}")
            restarting = "restarting" in probe.reasons
            boot = await fresh_boot()
            if round_ >= 0:
                restart_times.append(seconds)
                boot_times.append(boot)
                marked_restarting += restarting
        app.shutdown()
    restart, boot = statistics.median(restart_times), statistics.median(boot_times)
    p90 = statistics.quantiles(restart_times, n=10)[-1]
    print(
        f"restart of a failed no-op process, failure to healthy again (median of {restarts}): "
        f"{restart * 1000:8.3f} ms (p90 {p90 * 1000:.3f} ms)"
    )
    print(f"fresh boot of the same one-process app to healthy (median of {restarts}):          {boot * 1000:8.3f} ms")
    print(f"ratio restart / fresh boot: {restart / boot:.2f}x")
    print(f"health key unhealthy with reason 'restarting' during {marked_restarting} of {restarts} restarts")


# -- 2. soak ----------------------------------------------------------------------------


class Soak:
    def __init__(self) -> None:
        self.go = anyio.Event()
        self.runs = 0
        self.rng = random.Random(13)


class Churner(Process):
    """Runs a random short while, then raises or returns; restarted every time (``restart="always"``)."""

    health: Health = Inject("health")

    def __init__(self, soak: Soak, key: str) -> None:
        self.soak = soak
        self.key = key

    async def init(self) -> None:
        self.ok = claim(self.health, self.key)

    async def run(self) -> None:
        soak = self.soak
        soak.runs += 1
        self.ok.update(True)
        await soak.go.wait()
        await anyio.sleep(soak.rng.uniform(0.05, 0.5))
        if soak.rng.random() < 0.5:
            raise PlannedFailure("random failure")


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over t."""
    mean_t = statistics.fmean(t for t, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    num = sum((t - mean_t) * (y - mean_y) for t, y in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den if den else 0.0


async def scrape_restarts(address: tuple[str, int] | None) -> str:
    """The sum of ``nacelle_component_restarts_total`` from ``/metrics``, or why it was not read."""
    if address is None:
        return "not read (the ops endpoint needs the http and metrics extras)"
    host, port = address
    try:
        with anyio.fail_after(10):
            async with await anyio.connect_tcp(host, port) as stream:
                await stream.send(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                body = b""
                try:
                    while True:
                        body += await stream.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
    except (OSError, TimeoutError) as exc:
        return f"not read ({type(exc).__name__}: {exc})"
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in body.decode("utf-8", "replace").splitlines()
        if line.startswith("nacelle_component_restarts_total{")
    ]
    return f"{sum(values):.0f} (sum over {len(values)} components)" if values else "absent from /metrics"


def wrapped(label: str, values: list[int], per_line: int = 15) -> None:
    print(f"{label}:")
    for i in range(0, len(values), per_line):
        print("  " + " ".join(f"{v:>{len(str(max(values)))}}" for v in values[i : i + per_line]))


async def soak(seconds: int) -> None:
    extras = all(importlib.util.find_spec(m) is not None for m in ("hypercorn", "prometheus_client"))
    app = new_app("soak", ops_addr="127.0.0.1:0" if extras else None)
    state = Soak()
    for i in range(SOAK_PROCESSES):
        register(
            app, Churner(state, f"churner-{i}"), name=f"churner-{i}", priority=i % SOAK_PRIORITIES, options=SOAK_OPTIONS
        )
    app.on_ready(state.go.set)
    samples: list[tuple[float, int, int, int]] = []  # (t, RSS KB, fds, restarts so far)
    ended = False

    async def serve() -> None:
        nonlocal ended
        try:
            await app.serve()
        finally:
            ended = True
            state.go.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        await state.go.wait()
        origin = time.monotonic()
        for k in range(seconds + 1):
            await anyio.sleep(max(0.0, origin + k - time.monotonic()))
            if ended:
                raise BenchError(
                    f"the soak app stopped serving after {k} s: {app.errors[-1] if app.errors else 'no error recorded'}"
                )
            samples.append((time.monotonic() - origin, rss_kb(), open_fds(), state.runs - SOAK_PROCESSES))
        metric = await scrape_restarts(app.ops_address)
        errors = len(app.errors)
        app.shutdown()

    warmup = SOAK_WARMUP if seconds >= 2 * SOAK_WARMUP else seconds / 3
    steady = [s for s in samples if s[0] >= warmup]
    if len(steady) < 2:
        steady = samples
    restarts = samples[-1][3]
    wrapped("RSS, KB, one sample a second from ready", [s[1] for s in samples])
    wrapped("open fds", [s[2] for s in samples])
    print(
        f"RSS slope after warm-up (t >= {warmup:.3g} s, {len(steady)} samples): "
        f"{slope([(t, rss) for t, rss, _, _ in steady]):+.2f} KB/s (goal: flat); "
        f"{samples[0][1]} KB at ready, {samples[-1][1]} KB at the end"
    )
    print(
        f"open fds slope after warm-up: {slope([(t, fds) for t, _, fds, _ in steady]):+.4f} fds/s (goal: flat); "
        f"{samples[0][2]} at ready, {samples[-1][2]} at the end"
    )
    print(
        f"restarts done: {restarts} in {samples[-1][0]:.0f} s ({restarts / max(samples[-1][0], 1e-9):.0f}/s); "
        f"nacelle_component_restarts_total: {metric}"
    )
    print(f"errors held in app.errors at the end: {errors}")


def leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions in a (nested) exception group."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def main(seconds: int, restarts: int, backend: str) -> None:
    print(f"backend: {backend}")
    await latency(restarts)
    print(
        f"soak: {SOAK_PROCESSES} processes in {SOAK_PRIORITIES} priorities, restart='always', "
        f"one_for_one, backoff {SOAK_OPTIONS['backoff']}, {seconds} s"
    )
    await soak(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seconds", type=int, default=60, help="length of the soak (default 60)")
    parser.add_argument("--restarts", type=int, default=200, help="restarts timed for the latency (default 200)")
    parser.add_argument("--log-encoding", choices=["json", "console"], default="json")
    args = parser.parse_args()
    if args.seconds < 1 or args.restarts < 2:
        parser.error("--seconds must be at least 1 and --restarts at least 2")
    os.environ[f"{ENV_PREFIX}LOG_LEVEL"] = "warning"
    os.environ[f"{ENV_PREFIX}LOG_ENCODING"] = args.log_encoding
    check_feature()
    try:
        anyio.run(main, args.seconds, args.restarts, args.backend, backend=args.backend)
    except* BenchError as group:
        for exc in leaves(group):
            sys.stderr.write(f"bench/restart.py: {exc}\n")
        sys.exit(1)
