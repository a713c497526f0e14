"""Lambda invocations/s of a no-op handler: LambdaListener against AWS's runtime interface client.

Two runtimes serve the same no-op function (bench/_lambda_noop.py; it
answers ``null``) against the same local Runtime API server, the one the
tests use (tests/_lambda_runtime.py: a ``ThreadingHTTPServer`` in this
process, written from the protocol's documentation, keep-alive HTTP/1.1):

- awslambdaric: AWS's runtime interface client for Python (the one AWS's
  base images run), ``python -m awslambdaric _lambda_noop.handler``. It
  speaks to the API through its native client (C++ over libcurl).
- nacelle_py: an ``App`` with one ``LambdaListener`` whose ``async def
  handle`` returns ``None`` (``asyncio`` unless ``--backend trio``),
  booted by ``app.boot()``, speaking through httpx. A second row, not part
  of the goal, has a plain ``def handle``, which the listener runs on its
  thread. A third row is the floor of that client: a bare loop of ``GET
  next`` and ``POST response`` through one ``httpx.AsyncClient``, no
  framework (what the listener costs on top of httpx). A fourth row is
  the floor of any runtime on an anyio loop: the same loop on one TCP
  stream with hand-written HTTP/1.1 and no client library.

Each runtime is a long-lived subprocess with a server of its own (so none
takes another's invocations), started once and left polling, as on the
platform after a cold start; boot is not timed. A turn queues ``--invocations``
(2,000 by default) on one runtime's server at once and times them from the
queueing to the last answer; an idle runtime waits in its long poll and costs
nothing. The runtimes alternate, one warm-up round first, then ``--repeat``
rounds (7 by default). Each turn also reads the runtime's CPU time from
``/proc``: the server in this process has the other core, so invocations per
runtime CPU-second is the rate of a quiet core. The headline is the median of
the rounds' ratios of that figure (nacelle / awslambdaric); the wall-clock
medians and their ratio are printed too. Goal: >= 1.0x.

Without awslambdaric installed (it is in the ``bench`` extra), its row is
skipped and there is no ratio.

    python bench/lambda.py [--repeat 7] [--invocations 2000] [--backend asyncio|trio]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "tests"))
from _lambda_runtime import RuntimeAPI  # noqa: E402

BOOT_TIMEOUT = 60.0
TURN_TIMEOUT = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (its threads included), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Runtime:
    """One runtime subprocess and its own Runtime API server."""

    def __init__(self, label: str, args: list[str]) -> None:
        self.label = label
        self.api = RuntimeAPI().start()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LAMBDA_", "BENCH_", "_X_AMZN"))}
        env.update(
            AWS_LAMBDA_RUNTIME_API=self.api.address,
            PYTHONPATH=os.pathsep.join([str(BENCH), str(ROOT)]),
            LOG_LEVEL="warning",
            AWS_LAMBDA_FUNCTION_NAME="noop",
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
        )
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=BENCH,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.rates: list[float] = []
        self.cpu_rates: list[float] = []
        self.answered = 0

    def ready(self) -> None:
        """Wait (bounded) until the runtime polls: booted, warm, idle."""
        try:
            self.api.wait_polling(BOOT_TIMEOUT)
        except AssertionError:
            self.close()
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise SystemExit(f"{self.label}: did not ask for an invocation within {BOOT_TIMEOUT}s\n{err}") from None

    def turn(self, count: int, record: bool) -> None:
        """Queue ``count`` invocations at once and time them through the last answer."""
        self.api.wait_polling(TURN_TIMEOUT, nexts=self.answered + 1)
        cpu = cpu_seconds(self.proc.pid)
        start = time.perf_counter()
        self.api.invoke_many(b'{"noop": true}', count)
        self.api.wait_outcomes(self.answered + count, TURN_TIMEOUT)
        wall = time.perf_counter() - start
        used = cpu_seconds(self.proc.pid) - cpu
        outcomes = self.api.outcomes[self.answered :]
        self.answered += count
        bad = [o for o in outcomes if o.kind != "response" or o.body != b"null"]
        if bad:
            raise SystemExit(f"{self.label}: {len(bad)} wrong answers, e.g. {bad[0].kind} {bad[0].body[:200]!r}")
        if record:
            self.rates.append(count / wall)
            self.cpu_rates.append(count / used if used > 0 else float("inf"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.api.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--invocations", type=int, default=2000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    options = parser.parse_args()

    has_ric = importlib.util.find_spec("awslambdaric") is not None
    runtimes: list[Runtime] = []
    try:
        if has_ric:
            runtimes.append(Runtime("awslambdaric", ["-m", "awslambdaric", "_lambda_noop.handler"]))
        nacelle = Runtime(f"LambdaListener, async ({options.backend})", ["_lambda_noop.py", "async", options.backend])
        runtimes.append(nacelle)
        runtimes.append(
            Runtime(f"LambdaListener, def ({options.backend})", ["_lambda_noop.py", "sync", options.backend])
        )
        runtimes.append(Runtime(f"bare httpx loop ({options.backend})", ["_lambda_noop.py", "httpx", options.backend]))
        runtimes.append(Runtime(f"bare stream loop ({options.backend})", ["_lambda_noop.py", "raw", options.backend]))
        for runtime in runtimes:
            runtime.ready()
        for round_ in range(options.repeat + 1):  # round 0 warms up
            order = runtimes if round_ % 2 == 0 else runtimes[::-1]
            for runtime in order:
                runtime.turn(options.invocations, record=round_ > 0)
    finally:
        for runtime in runtimes:
            runtime.close()

    print(
        f"{options.invocations} no-op invocations per turn, {options.repeat} rounds (+1 warm-up),"
        f" Python {sys.version.split()[0]}, medians:"
    )
    for runtime in runtimes:
        print(
            f"  {runtime.label:34} {statistics.median(runtime.rates):8,.0f} invocations/s"
            f"  {statistics.median(runtime.cpu_rates):8,.0f} per runtime CPU-s"
        )
    if not has_ric:
        print("  awslambdaric: not installed (pip install 'nacelle-py[bench]'): no ratio")
        return
    ric = runtimes[0]
    cpu_ratio = statistics.median(n / r for n, r in zip(nacelle.cpu_rates, ric.cpu_rates))
    wall_ratio = statistics.median(n / r for n, r in zip(nacelle.rates, ric.rates))
    httpx_loop, stream_loop = runtimes[-2], runtimes[-1]
    floor = statistics.median(n / h for n, h in zip(nacelle.cpu_rates, httpx_loop.cpu_rates))
    print(f"LambdaListener/bare httpx loop: {floor:.2f}x per runtime CPU-s")
    least = statistics.median(s / r for s, r in zip(stream_loop.cpu_rates, ric.cpu_rates))
    print(f"bare stream loop/awslambdaric: {least:.2f}x per runtime CPU-s (the most any anyio runtime could reach)")
    print(
        f"ratio LambdaListener/awslambdaric: {cpu_ratio:.2f}x per runtime CPU-s (goal >= 1.0x), {wall_ratio:.2f}x wall clock"
    )


if __name__ == "__main__":
    main()
