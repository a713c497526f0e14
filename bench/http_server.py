"""Requests/s of a trivial endpoint through HTTPServer against the same Hypercorn started directly.

The endpoint: a plain ASGI callable answering 200 "ok" (text/plain, content-length). Baseline:
``hypercorn.asyncio.serve`` (``--backend trio``: ``hypercorn.trio.serve``) with HTTPServer's settings
(graceful timeout, default keep-alive, no access log, error log at warnings). Candidate: an ``App``
with ``HTTPServer(app)`` registered, run by ``app.boot()``. Both run with ``LOG_LEVEL=warning``.

The servers are subprocesses and the load generator runs in this process: on two cores, one is for
the server under load and one for the client, which so never takes the server's CPU. The client
keeps ``--connections`` HTTP/1.1 connections per server, each sending a request and reading the
whole response in a loop; only complete 200 "ok" responses count, anything else is an error (exit
status 1). Each round starts both servers afresh and loads them in alternating turns of 0.5 s until
each had ``--seconds``, so a busy spell of this shared machine falls on both. Each turn also reads
the server's own CPU time from /proc: both servers are CPU-bound, so requests per second of server
CPU is the requests/s a quiet core gives, whatever share of a core a busy machine left each turn.
The ratio printed last is HTTPServer / direct of that figure, the median of the rounds' ratios
(goal >= 0.95x); the wall-clock requests/s and their ratio are printed too.

    python bench/http_server.py [--seconds 3] [--rounds 9] [--connections 16] [--backend asyncio|trio] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

TURN = 0.5  # seconds; a turn and a warm-up stay below Hypercorn's 5 s keep-alive timeout for idle connections
GRACEFUL = 5.0  # seconds; HTTPServer's default HTTP_SHUTDOWN_TIMEOUT, given to both
KINDS = {"direct": "direct Hypercorn", "framework": "HTTPServer + App.boot()"}
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"2")],
}
BODY = {"type": "http.response.body", "body": b"ok"}


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """The trivial endpoint; it takes part in the lifespan so that Hypercorn on trio can start it directly."""
    if scope["type"] == "http":
        await send(START)
        await send(BODY)
    elif scope["type"] == "lifespan":
        for _ in range(2):  # startup, then shutdown
            await send({"type": (await receive())["type"] + ".complete"})


def serve_direct(port: int, backend: str) -> None:
    """The baseline server (a subprocess: ``--serve direct``)."""
    import anyio
    from hypercorn.config import Config

    config = Config()  # HTTPServer's settings: graceful timeout, default keep-alive, no access log
    config.bind, config.graceful_timeout = [f"127.0.0.1:{port}"], GRACEFUL
    config.accesslog, config.loglevel = None, "WARNING"

    async def main() -> None:
        async def on_sigterm() -> None:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                await signals.__anext__()

        if backend == "trio":
            from hypercorn.trio import serve
        else:
            from hypercorn.asyncio import serve  # type: ignore[assignment]
        await serve(ok_app, config, shutdown_trigger=on_sigterm, mode="asgi")

    anyio.run(main, backend=backend)


def serve_framework(port: int, backend: str) -> None:
    """The candidate (a subprocess: ``--serve framework``)."""
    from nacelle_py import App
    from nacelle_py.base import HTTPServer

    os.environ.update(HTTP_PORT=str(port), HTTP_SHUTDOWN_TIMEOUT=str(GRACEFUL), HTTP_DRAIN_DELAY="0")
    app = App("bench")
    app.register(HTTPServer(ok_app), name="http")
    sys.exit(app.boot([], backend=backend))  # type: ignore[arg-type]


class Load:
    """What the connections of one round share: whose turn it is, the counts, the errors."""

    def __init__(self, kinds: list[str]) -> None:
        self.responses, self.errors, self.done = dict.fromkeys(kinds, 0), list[str](), False
        self.active, self.turn = kinds[0], {kind: asyncio.Event() for kind in kinds}

    def switch(self, kind: str) -> None:
        self.turn[self.active].clear()
        self.active = kind
        self.turn[kind].set()


async def connection(port: int, load: Load, kind: str, once: bool = False) -> None:
    """One keep-alive connection: request, whole response, check it, again, while it is ``kind``'s turn."""
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not load.done:
            if load.active != kind:
                await load.turn[kind].wait()
                continue
            writer.write(REQUEST)
            lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            fields = dict(line.lower().split(b":", 1) for line in lines[1:] if line)
            body = await reader.readexactly(int(fields[b"content-length"]))
            if status != 200 or body != b"ok":
                load.errors.append(f"{kind}: status {status}, body {body[:40]!r}")
                return
            load.responses[kind] += 1
            if once:
                return
            if fields.get(b"connection", b"").strip() == b"close":  # Hypercorn's keep_alive_max_requests
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, KeyError) as exc:
        load.errors.append(f"{kind}: {exc!r}")
    finally:
        if writer is not None:
            writer.close()


def sample(load: Load, kind: str, pid: int) -> tuple[float, ...]:
    """``kind``'s responses so far, the time, the server's CPU seconds (Linux /proc) and ours."""
    with open(f"/proc/{pid}/stat") as f:
        server = sum(map(int, f.read().rsplit(")", 1)[1].split()[11:13])) / os.sysconf("SC_CLK_TCK")
    return load.responses[kind], time.perf_counter(), server, time.process_time()


async def measure(servers: dict[str, tuple[int, int]], args: argparse.Namespace, flip: bool) -> dict[str, Any]:
    """Each kind's responses, server CPU and client CPU over its own turns; the order is ABBA..."""
    kinds = list(servers)[::-1] if flip else list(servers)
    load, turns = Load(kinds), max(1, round(args.seconds / TURN))
    sums = {kind: [0.0] * 4 for kind in kinds}  # responses, seconds, server CPU s, client CPU s
    async with asyncio.timeout(2 * (args.warmup + args.seconds) + 10):  # every wait is bounded
        tasks = [
            asyncio.create_task(connection(port, load, kind))
            for kind, (port, _) in servers.items()
            for _ in range(args.connections)
        ]
        for kind in kinds:
            load.switch(kind)
            await asyncio.sleep(args.warmup)
        for i in range(turns):
            for kind in kinds[::-1] if i % 2 == 0 else kinds:
                load.switch(kind)
                pid, before = servers[kind][1], sample(load, kind, servers[kind][1])
                await asyncio.sleep(args.seconds / turns)
                sums[kind] = [s + b - a for s, a, b in zip(sums[kind], before, sample(load, kind, pid))]
        load.done = True
        for event in load.turn.values():
            event.set()
        await asyncio.gather(*tasks)
    return {
        kind: {"rate": n / wall, "server_cpu": server / wall, "client_cpu": client / wall, "per_cpu": n / server}
        for kind, (n, wall, server, client) in sums.items()
    } | {"errors": load.errors}


async def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until one request is answered; fails if the server exits, answers wrongly or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before answering")
        load = Load(["probe"])
        async with asyncio.timeout(5.0):
            await connection(port, load, "probe", once=True)
        if load.responses["probe"]:
            return
        if load.errors and "status" in load.errors[0]:
            raise RuntimeError(f"the server on port {port} answers wrongly: {load.errors[0]}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"server on port {port} not answering after {timeout:.0f} s")


def free_port() -> int:
    # Racy (another process may take the port first), but then the server fails and we say so.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_round(args: argparse.Namespace, flip: bool) -> dict[str, Any]:
    """Fresh servers of both kinds (one odd process cannot bias a kind); always stopped, at last by SIGKILL."""
    procs: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for kind in KINDS:
            port = free_port()
            cmd = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--backend", args.backend]
            env = {**os.environ, "LOG_LEVEL": "warning"}
            procs[kind] = port, subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        for port, proc in procs.values():
            asyncio.run(wait_ready(port, proc))
        return asyncio.run(measure({kind: (port, proc.pid) for kind, (port, proc) in procs.items()}, args, flip))
    finally:
        for _, proc in procs.values():
            proc.terminate()  # SIGTERM: a graceful stop
        for _, proc in procs.values():
            try:
                proc.wait(timeout=GRACEFUL + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def main(args: argparse.Namespace) -> int:
    print(
        f"server backend: {args.backend} (fresh subprocesses each round); client: asyncio streams in this process, "
        f"{args.connections} connections per server; {args.rounds} rounds of {args.seconds:g} s per kind"
    )
    rounds: list[dict[str, Any]] = []
    for i in range(args.rounds):
        rounds.append(r := run_round(args, flip=bool(i % 2)))
        print(
            f"round {i + 1}: direct {r['direct']['rate']:8,.0f} req/s ({r['direct']['per_cpu']:6,.0f} per CPU-s), "
            f"HTTPServer {r['framework']['rate']:8,.0f} req/s ({r['framework']['per_cpu']:6,.0f} per CPU-s), "
            f"ratio {r['framework']['rate'] / r['direct']['rate']:.3f}x "
            f"(per CPU-s {r['framework']['per_cpu'] / r['direct']['per_cpu']:.3f}x)",
            flush=True,
        )
    median = {kind: statistics.median(r[kind]["rate"] for r in rounds) for kind in KINDS}
    for kind, label in KINDS.items():
        cpu = [r[kind]["server_cpu"] for r in rounds]
        print(
            f"{label + ':':<25} {median[kind]:8,.0f} req/s median (server CPU {statistics.median(cpu):4.0%}, "
            f"min {min(cpu):4.0%}; client CPU {statistics.median(r[kind]['client_cpu'] for r in rounds):4.0%})"
        )
    ratios = [r["framework"]["rate"] / r["direct"]["rate"] for r in rounds]
    print(f"per-round ratios: min {min(ratios):.3f}x, max {max(ratios):.3f}x")
    if busy := sum(r[kind]["server_cpu"] < 0.9 for r in rounds for kind in KINDS):
        print(f"note: {busy} of {2 * len(rounds)} measurements had < 90% of a core for the server (a busy machine)")
    if errors := [e for r in rounds for e in r["errors"]]:
        print(f"ERRORS: {len(errors)} failed or wrong responses, e.g. {errors[:2]}; the figures are not valid")
    wall = median["framework"] / median["direct"]
    per_cpu = statistics.median(r["framework"]["per_cpu"] / r["direct"]["per_cpu"] for r in rounds)
    print(f"requests/s ratio of the medians (wall clock; moves with what else the machine runs): {wall:.2f}x")
    # The headline: requests per second of the server's own CPU. Both servers are
    # CPU-bound, so this is requests/s on a quiet core, and it does not depend on how
    # much of a core a shared machine happened to give each turn.
    print(
        f"ratio HTTPServer / direct Hypercorn: {per_cpu:.2f}x (requests per server CPU-second, "
        f"median of {len(rounds)} rounds; goal >= 0.95)"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per server and round")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load per server first (< 5)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections per server")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio", help="both servers' backend")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 0.5 s")
    parser.add_argument("--serve", choices=list(KINDS), help=argparse.SUPPRESS)  # the server subprocess
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit((serve_direct if args.serve == "direct" else serve_framework)(args.port, args.backend))
    if args.quick:
        args.rounds, args.seconds, args.warmup = 2, 0.5, 0.2
    sys.exit(main(args))
