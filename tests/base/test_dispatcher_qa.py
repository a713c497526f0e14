"""QA black-box pass over named tasks: what the semantics suite (test_dispatcher_named.py) does not cover.

Written from the user-facing contract (docs/dispatcher.md, docs/scale-out.md):

- a real App subprocess on a password-protected Redis: ``--help`` lists the settings, the
  password is never printed, ``/metrics`` exports the Redis stats, ``/readyz`` goes 503
  naming Redis while it is down and ready again once it is back;
- a standalone dispatcher whose Redis goes away: ``enqueue`` gives up within a bound with
  ``DispatcherError`` (password masked), ``result`` stays bounded, both work again after;
- ``process=True`` tasks whose worker process dies;
- two Apps in one process (app prefixes, default stream names);
- ``MissingExtraError`` without coredis (a subprocess with ``sys.modules['coredis'] = None``);
- bad ``REDIS_URL`` values, with a password in them;
- ``keep_result`` default, ``at=`` in another timezone, plain-function timeouts.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import pytest
import structlog
from _redis import _read_reply, command, free_port, require_redis_server
from _support import serving, wait_until
from pydantic import BaseModel

from nacelle_py import ConfigError, RegistrationError
from nacelle_py.base import Dispatcher, DispatcherError, TaskFailed
from nacelle_py.testing import test_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from harness import ROOT, AppProcess, clean_env  # noqa: E402

PASSWORD = "s3cretQA"
BOOT_TIMEOUT = 30.0


class Num(BaseModel):
    n: int


@pytest.fixture
def quiet_logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


# -- a password-protected redis-server of our own ---------------------------------------------------


class AuthRedis:
    """A redis-server started with ``--requirepass``; restartable on the same port (empty each time)."""

    def __init__(self, binary: str, data_dir: Path) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def command(self, *args: str | int) -> Any:
        """AUTH, then one command, on one connection; the second reply."""
        parts = [str(a).encode() for a in args]
        request = b""
        for cmd in ([b"AUTH", PASSWORD.encode()], parts):
            request += b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in cmd)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(request)
            with conn.makefile("rb") as reader:
                _read_reply(reader)
                return _read_reply(reader)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "redis-server exited at start"
            try:
                if self.command("PING") == b"PONG":
                    return
            except Exception:
                pass
            time.sleep(0.02)
        raise AssertionError("the password redis-server did not answer")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def auth_redis(tmp_path: Path) -> Iterator[AuthRedis]:
    server = AuthRedis(require_redis_server(), tmp_path / "auth-redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- an App subprocess -------------------------------------------------------------------------------

APP_SCRIPT = textwrap.dedent("""
    import sys
    from pydantic import BaseModel
    from nacelle_py import App
    from nacelle_py.base import Dispatcher

    class Num(BaseModel):
        n: int

    jobs = Dispatcher(max_workers=4)

    @jobs.task("double")
    async def double(num: Num) -> int:
        return num.n * 2

    app = App("qa")
    app.register(jobs, name="jobs", priority=1)
    raise SystemExit(app.boot(sys.argv[2:], backend=sys.argv[1]))
""")


def app_env(url: str, stream: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in clean_env().items() if not k.startswith(("DISPATCHER_", "REDIS_", "QA_"))}
    env.update(
        QA_DISPATCHER_BACKEND="redis",
        QA_REDIS_URL=url,
        QA_DISPATCHER_STREAM=stream,
        QA_DISPATCHER_LEASE="5",
        QA_OPS_ADDR="127.0.0.1:0",
        **extra,
    )
    return env


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def poll_http(url: str, want: int, limit: float) -> tuple[int, str]:
    deadline = time.monotonic() + limit
    while True:
        status, body = http_get(url)
        if status == want or time.monotonic() > deadline:
            return status, body
        time.sleep(0.1)


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_app_on_a_password_redis_help_metrics_health_and_no_password_anywhere(
    loop: str, auth_redis: AuthRedis, tmp_path: Path
) -> None:
    script = tmp_path / "qa_app.py"
    script.write_text(APP_SCRIPT)
    stream = f"qa:{uuid.uuid4().hex}"
    env = app_env(auth_redis.url, stream)

    # --help: every setting listed, exit 0, the password nowhere.
    helped = subprocess.run(
        [sys.executable, str(script), loop, "--help"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert helped.returncode == 0, helped.stderr
    help_text = helped.stdout + helped.stderr
    for setting in (
        "DISPATCHER_BACKEND",
        "REDIS_URL",
        "DISPATCHER_STREAM",
        "DISPATCHER_LEASE",
        "DISPATCHER_MAX_DELIVERIES",
        "DISPATCHER_CONSUME",
        "DISPATCHER_KEY_TTL",
    ):
        assert setting in help_text, f"{setting} missing from --help:\n{help_text}"
    assert PASSWORD not in help_text, help_text

    with AppProcess([str(script), loop], env) as app:
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
        loaded = [e for e in app.events if e.get("event") == "config loaded"]
        masked = f"***@127.0.0.1:{auth_redis.port}"
        assert any(masked in json.dumps(e) for e in loaded), app.dump()  # the URL shown, its password masked
        address = app.wait_event("ops endpoint listening", 5)["address"]
        base = f"http://{address}"

        async def produce() -> int:
            async with Dispatcher(backend="redis", redis_url=auth_redis.url, stream=stream, consume=False) as jobs:
                jobs.task("double")(_double)
                return await jobs.result(await jobs.enqueue("double", Num(n=21)), timeout=10)

        assert anyio.run(produce, backend=loop) == 42

        status, body = poll_http(f"{base}/readyz", 200, 5)
        assert status == 200, body
        # Redis counts refresh once a second: wait for the fields to show up.
        deadline = time.monotonic() + 5
        fields = (
            "stream_length",
            "pending",
            "lag",
            "scheduled",
            "retried_total",
            "reclaimed_total",
            "dead_lettered_total",
            "handed_back_total",
            "completed_total",
        )
        while True:
            status, metrics = http_get(f"{base}/metrics")
            missing = [f for f in fields if f'nacelle_dispatcher_{f}{{component="jobs"}}' not in metrics]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == 200
        assert not missing, f"missing from /metrics: {missing}\n{metrics}"
        assert 'nacelle_dispatcher_completed_total{component="jobs"} 1.0' in metrics, metrics

        # Redis goes away: /readyz turns 503 with a reason naming Redis (masked), then back.
        auth_redis.stop()
        status, body = poll_http(f"{base}/readyz", 503, 15)
        assert status == 503, body
        answer = json.loads(body)
        reasons = " ".join(str(v) for v in answer.get("reasons", {}).values())
        assert "redis" in reasons.lower(), answer
        assert any("redis" in k for k in answer.get("unhealthy", [])), answer
        assert PASSWORD not in body
        status, debug = http_get(f"{base}/debug/components")
        assert status == 200 and "redis" in debug.lower() and PASSWORD not in debug, debug
        auth_redis.start()
        status, body = poll_http(f"{base}/readyz", 200, 20)
        assert status == 200, body
        assert anyio.run(produce, backend=loop) == 42  # consumes again (Redis came back empty)

        app.send(signal.SIGTERM)
        assert app.wait(20) == 0, app.dump()
        output = app.stdout + app.stderr
    assert PASSWORD not in output, output
    assert "unreachable" in output and "reachable again" in output


async def _double(num: Num) -> int:
    return num.n * 2


# -- a standalone dispatcher whose Redis goes away --------------------------------------------------


@pytest.mark.anyio
async def test_enqueue_while_redis_is_down_gives_up_bounded_then_works_again(
    anyio_backend: str, auth_redis: AuthRedis, quiet_logs: list[dict[str, Any]]
) -> None:
    stream = f"qa:{uuid.uuid4().hex}"
    jobs = Dispatcher(backend="redis", redis_url=auth_redis.url, stream=stream, max_workers=4)
    jobs.task("double")(_double)
    with anyio.fail_after(60):
        async with jobs:
            assert await jobs.result(await jobs.enqueue("double", Num(n=1)), timeout=10) == 2
            await anyio.to_thread.run_sync(auth_redis.stop)
            started = time.monotonic()
            with pytest.raises(DispatcherError) as info:
                await jobs.enqueue("double", Num(n=2))
            took = time.monotonic() - started
            assert 5 <= took < 12.5, took
            assert PASSWORD not in str(info.value), info.value
            assert f"127.0.0.1:{auth_redis.port}" in str(info.value)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await jobs.result("no-such-id", timeout=0.5)
            assert time.monotonic() - started < 3
            await anyio.to_thread.run_sync(auth_redis.start)
            task_id = await jobs.enqueue("double", Num(n=3))  # back: goes through
            assert await jobs.result(task_id, timeout=15) == 6
    text = json.dumps(quiet_logs, default=str)
    assert PASSWORD not in text


# -- worker processes that die ----------------------------------------------------------------------


def die_in_process(num: Num) -> int:
    if num.n < 0:
        os._exit(3)
    return os.getpid()


def dying_call(code: int) -> None:
    os._exit(code)


def pid_call() -> int:
    return os.getpid()


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "redis":
        return {
            "backend": "redis",
            "redis_url": request.getfixturevalue("redis_url"),
            "stream": f"qa:{uuid.uuid4().hex}",
            "lease": 2.0,
        }
    return {"backend": "memory"}


@pytest.mark.anyio
async def test_a_process_task_whose_worker_dies_fails_and_the_next_one_runs(
    kind: dict[str, Any], quiet_logs: list[dict[str, Any]]
) -> None:
    jobs = Dispatcher(max_processes=1, max_workers=4, task_timeout=20.0, **kind)
    jobs.task("maybe_die", process=True)(die_in_process)
    with anyio.fail_after(60):
        async with jobs:
            first = await jobs.result(await jobs.enqueue("maybe_die", Num(n=1)), timeout=20)
            assert first != os.getpid()
            dead = await jobs.enqueue("maybe_die", Num(n=-1))
            with pytest.raises(TaskFailed) as info:
                await jobs.result(dead, timeout=20)
            assert info.value.error_type, info.value
            after = await jobs.result(await jobs.enqueue("maybe_die", Num(n=2)), timeout=20)
            assert after not in (os.getpid(), first)  # a new worker process
            letters = await jobs.dead_letters()
            assert [letter.id for letter in letters] == [dead]
            # the same through call(process=True)
            with pytest.raises(Exception):  # noqa: B017,PT011 - any error, but not a hang
                await jobs.call(dying_call, 5, process=True, timeout=20)
            assert await jobs.call(pid_call, process=True, timeout=20) != os.getpid()


# -- two Apps in one process ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_two_apps_in_one_process_keep_to_their_own_streams(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, quiet_logs: list[dict[str, Any]]
) -> None:
    for key in list(os.environ):
        if "DISPATCHER_" in key or "REDIS_URL" in key:
            monkeypatch.delenv(key)
    monkeypatch.setenv("DISPATCHER_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("ALPHA_DISPATCHER_STREAM", "qa:alpha")  # beta: the default nacelle:beta:jobs
    apps, dispatchers = {}, {}
    seen: dict[str, list[int]] = {"alpha": [], "beta": []}
    for name in ("alpha", "beta"):
        app = test_app(name)
        jobs = app.register(Dispatcher(max_workers=4), name="jobs", priority=1)

        def register(jobs: Dispatcher = jobs, name: str = name) -> None:
            @jobs.task("who")
            async def who(num: Num) -> str:
                seen[name].append(num.n)
                return name

        register()
        apps[name], dispatchers[name] = app, jobs
    async with serving(apps["alpha"], limit=30) as a, serving(apps["beta"], limit=30) as b:
        ids = {name: await d.enqueue_many("who", [Num(n=i) for i in range(10)]) for name, d in dispatchers.items()}
        for name, d in dispatchers.items():
            assert [await d.result(i, timeout=10) for i in ids[name]] == [name] * 10
        assert dispatchers["alpha"].options.stream == "qa:alpha"
        assert dispatchers["beta"].options.stream == "nacelle:beta:jobs"
    assert a.status == 0 and b.status == 0
    assert sorted(seen["alpha"]) == list(range(10)) and sorted(seen["beta"]) == list(range(10))
    port = urlsplit(redis_url).port
    assert port is not None
    keys = command(port, "KEYS", "*")
    assert keys and all(k.startswith((b"qa:alpha", b"nacelle:beta:jobs")) for k in keys), keys
    assert command(port, "TYPE", "nacelle:beta:jobs") == b"stream"


# -- no coredis ---------------------------------------------------------------------------------------

NO_COREDIS = textwrap.dedent("""
    import sys, json, anyio
    sys.modules["coredis"] = None  # import coredis now fails
    import nacelle_py, nacelle_py.base
    from nacelle_py import App
    from nacelle_py import MissingExtraError
    from nacelle_py.base import Dispatcher
    out = {"public": hasattr(nacelle_py, "MissingExtraError") or hasattr(nacelle_py.base, "MissingExtraError")}
    try:
        d = Dispatcher(backend="redis", redis_url="redis://127.0.0.1:1/0")
        async def use():
            async with d:
                pass
        anyio.run(use)
        out["standalone"] = "no error"
    except MissingExtraError as exc:
        out["standalone"] = "MissingExtraError: " + str(exc)
    except BaseException as exc:
        out["standalone"] = type(exc).__name__ + ": " + str(exc)
    async def memory():
        d = Dispatcher()
        @d.task("x")
        async def x() -> int:
            return 7
        async with d:
            return await d.result(await d.enqueue("x"), timeout=5)
    out["memory"] = anyio.run(memory)
    app = App("nc")
    app.register(Dispatcher(), name="jobs", priority=1)
    out["app_status"] = app.boot([])
    print("RESULT " + json.dumps(out))
""")


def test_redis_backend_without_coredis_is_a_missing_extra_error(tmp_path: Path) -> None:
    script = tmp_path / "no_coredis.py"
    script.write_text(NO_COREDIS)
    env = {k: v for k, v in clean_env().items() if not k.startswith(("DISPATCHER_", "REDIS_", "NC_"))}
    env.update(DISPATCHER_BACKEND="redis", REDIS_URL=f"redis://:{PASSWORD}@127.0.0.1:1/0")
    done = subprocess.run([sys.executable, str(script)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["public"], out  # users catch it as nacelle_py.MissingExtraError
    assert out["standalone"].startswith("MissingExtraError"), out
    assert "nacelle-py[redis]" in out["standalone"], out
    assert out["memory"] == 7, out
    assert out["app_status"] == 1, out
    assert "nacelle-py[redis]" in done.stderr, done.stderr
    assert PASSWORD not in done.stdout + done.stderr


# -- bad REDIS_URL values -------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    "value",
    [
        "http://x",
        "redis://127.0.0.1:notaport/0",
        f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
        "redis://127.0.0.1:99999/0",
        "redis://",
        "",
    ],
)
async def test_a_bad_redis_url_fails_boot_naming_the_variable_and_masking_the_password(
    value: str, monkeypatch: pytest.MonkeyPatch, quiet_logs: list[dict[str, Any]]
) -> None:
    for key in list(os.environ):
        if "DISPATCHER_" in key or "REDIS_URL" in key:
            monkeypatch.delenv(key)
    monkeypatch.setenv("DISPATCHER_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", value)
    app = test_app("t")
    jobs = app.register(Dispatcher(), name="jobs", priority=1)
    jobs.task("double")(_double)
    with anyio.fail_after(15):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert isinstance(error.cause, ConfigError), error
    assert "REDIS_URL" in str(error), str(error)
    assert PASSWORD not in str(error)
    assert PASSWORD not in json.dumps(quiet_logs, default=str)


@pytest.mark.parametrize(
    "value",
    [
        f"redis://:{PASSWORD}@127.0.0.1:notaport/0",
        f"http://:{PASSWORD}@127.0.0.1:6379/0",
    ],
)
def test_a_bad_redis_url_keyword_is_a_registration_error_without_the_password(value: str) -> None:
    with pytest.raises(RegistrationError, match="redis_url") as info:
        Dispatcher(backend="redis", redis_url=value)
    assert PASSWORD not in str(info.value), str(info.value)


# -- small contract points ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_keep_result_defaults_to_an_hour_in_redis(redis_url: str, quiet_logs: list[dict[str, Any]]) -> None:
    stream = f"qa:{uuid.uuid4().hex}"
    jobs = Dispatcher(backend="redis", redis_url=redis_url, stream=stream, max_workers=4)
    jobs.task("double")(_double)
    port = urlsplit(redis_url).port
    assert port is not None
    with anyio.fail_after(20):
        async with jobs:
            default = await jobs.enqueue("double", Num(n=1))
            short = await jobs.enqueue("double", Num(n=2), keep_result=30)
            assert await jobs.result(default, timeout=10) == 2
            assert await jobs.result(short, timeout=10) == 4
    ttl_default = command(port, "PTTL", f"{stream}:result:{default}")
    ttl_short = command(port, "PTTL", f"{stream}:result:{short}")
    assert isinstance(ttl_default, int) and 3_590_000 < ttl_default <= 3_600_000, ttl_default
    assert isinstance(ttl_short, int) and 20_000 < ttl_short <= 30_000, ttl_short


@pytest.mark.anyio
async def test_at_in_another_timezone_is_the_same_instant(
    kind: dict[str, Any], quiet_logs: list[dict[str, Any]]
) -> None:
    jobs = Dispatcher(max_workers=4, **kind)
    ran: list[float] = []

    @jobs.task("mark")
    async def mark() -> float:
        ran.append(time.time())
        return time.time()

    plus5 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
    minus8 = datetime.timezone(datetime.timedelta(hours=-8))
    with anyio.fail_after(20):
        async with jobs:
            start = time.time()
            a = await jobs.enqueue("mark", at=datetime.datetime.now(plus5) + datetime.timedelta(seconds=0.6))
            b = await jobs.enqueue("mark", at=datetime.datetime.now(minus8) + datetime.timedelta(seconds=0.6))
            at_a = await jobs.result(a, timeout=10)
            at_b = await jobs.result(b, timeout=10)
    for when in (at_a, at_b):
        assert 0.5 <= when - start < 3.0, when - start


@pytest.mark.anyio
async def test_a_plain_function_past_its_timeout_fails_as_timeout_and_is_retried(
    kind: dict[str, Any], quiet_logs: list[dict[str, Any]]
) -> None:
    jobs = Dispatcher(max_workers=4, max_threads=4, **kind)
    lock = threading.Lock()
    runs: list[float] = []

    @jobs.task("slow", retries=1, timeout=0.2, backoff=(0.01, 0.01))
    def slow(num: Num) -> int:
        with lock:
            runs.append(time.monotonic())
        time.sleep(0.6)
        return num.n

    with anyio.fail_after(20):
        async with jobs:
            started = time.monotonic()
            task_id = await jobs.enqueue("slow", Num(n=1))
            with pytest.raises(TaskFailed) as info:
                await jobs.result(task_id, timeout=10)
            took = time.monotonic() - started
            await wait_until(lambda: len(runs) == 2, limit=3)
            (letter,) = await jobs.dead_letters()
    assert info.value.error_type == "TimeoutError", info.value
    assert took < 1.5, took  # two timeouts of 0.2 s, not two full runs of 0.6 s... plus slack
    assert len(runs) == 2
    assert letter.id == task_id and letter.attempts == 2 and letter.error.startswith("TimeoutError")


@pytest.mark.anyio
async def test_a_task_can_enqueue_another_and_results_chain(
    kind: dict[str, Any], quiet_logs: list[dict[str, Any]]
) -> None:
    jobs = Dispatcher(max_workers=4, **kind)

    @jobs.task("leaf")
    async def leaf(num: Num) -> int:
        return num.n + 1

    @jobs.task("parent")
    async def parent(num: Num) -> int:
        child = await jobs.enqueue("leaf", Num(n=num.n))
        return int(await jobs.result(child, timeout=10)) * 10

    with anyio.fail_after(20):
        async with jobs:
            ids = await jobs.enqueue_many("parent", [Num(n=i) for i in range(3)])
            assert [await jobs.result(i, timeout=15) for i in ids] == [10, 20, 30]


def test_redis_server_binary_present() -> None:
    assert shutil.which("redis-server"), "redis-server missing: the Redis tests here would skip"
