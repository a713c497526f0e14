"""Named tasks: one semantics suite that runs against the memory and the Redis backends.

Every shared test takes the ``backend`` fixture, a factory of Dispatchers on
one backend (Redis: a throwaway server and a stream of the test's own), and
runs on asyncio and trio. The Redis-only tests below the suite cover what has
no memory counterpart: hand-written entries (poison, dead consumers),
several consumers of one stream (graceful stop, leases), two streams on one
server, and the settings that choose the backend under an App.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
import structlog
from _redis import command
from _support import serving, wait_until
from pydantic import BaseModel

from nacelle_py import ConfigError, RegistrationError
from nacelle_py.base import DeadLetter, Dispatcher, DispatcherStats, TaskFailed
from nacelle_py.testing import test_app

pytestmark = pytest.mark.anyio

UTC = datetime.UTC
GROUP = "nacelle"  # the consumer group every dispatcher joins (see _redis_loops.GROUP)


@pytest.fixture(autouse=True)
def quiet_logs() -> Iterator[None]:
    """Capture log lines instead of rendering them: a failed task's pretty traceback costs ~50 ms."""
    with structlog.testing.capture_logs():
        yield


# -- payloads, and the functions that run in worker processes (module level: they are pickled) --


class Email(BaseModel):
    to: str
    subject: str


class Num(BaseModel):
    n: int


class Receipt(BaseModel):
    to: str
    chars: int


def square_in_process(num: Num) -> dict[str, int]:
    return {"square": num.n * num.n, "pid": os.getpid()}


def pid_and_product(a: int, b: int) -> tuple[int, int]:
    return os.getpid(), a * b


def fail_in_process(message: str) -> None:
    raise ValueError(message)


def sleep_in_process(seconds: float) -> None:
    time.sleep(seconds)


# -- helpers ------------------------------------------------------------------------------------


class Runs:
    """What the tasks saw, in order: (label, value, Unix time); thread-safe (plain tasks run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, Any, float]] = []

    def add(self, label: str, value: Any = None) -> None:
        with self._lock:
            self.events.append((label, value, time.time()))

    def values(self, label: str) -> list[Any]:
        with self._lock:
            return [v for name, v, _ in self.events if name == label]

    def times(self, label: str) -> list[float]:
        with self._lock:
            return [t for name, _, t in self.events if name == label]

    def count(self, label: str) -> int:
        return len(self.values(label))


class Backend:
    """The ``backend`` fixture: builds Dispatchers on one backend; Redis ones share a fresh stream."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.url = url
        self.stream = f"test:{uuid.uuid4().hex}"

    def __call__(self, **kwargs: Any) -> Dispatcher:
        kwargs.setdefault("max_workers", 8)
        kwargs.setdefault("task_timeout", 5.0)
        if self.kind == "redis":
            kwargs.setdefault("backend", "redis")
            kwargs.setdefault("redis_url", self.url)
            kwargs.setdefault("stream", self.stream)
            kwargs.setdefault("lease", 1.0)
        else:
            kwargs.setdefault("backend", "memory")
        return Dispatcher(**kwargs)

    def __repr__(self) -> str:
        return self.kind


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "redis":
        return Backend("redis", request.getfixturevalue("redis_url"))
    return Backend("memory", None)


def redis_command(url: str, *args: str | bytes | int) -> Any:
    """One raw command to the test server (a plain socket: no client of the code under test)."""
    port = urlsplit(url).port
    assert port is not None
    return command(port, *args)


def entry(task_id: str, task: str, payload: Any, *, attempts: int = 0, keep: float = 3600.0) -> str:
    """A hand-written stream entry (see _codec: the ``m`` field of an entry)."""
    return json.dumps({"i": task_id, "t": task, "a": attempts, "k": keep, "e": time.time(), "p": payload})


async def eventually(probe: Callable[[], Awaitable[Any]], check: Callable[[Any], bool], limit: float = 5.0) -> Any:
    """Await ``probe()`` until ``check`` accepts its value; fail after ``limit`` seconds."""
    with anyio.fail_after(limit):
        while True:
            value = await probe()
            if check(value):
                return value
            await anyio.sleep(0.01)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


# ===============================================================================================
# The shared semantics suite: every test below runs on memory and on redis (and asyncio and trio)
# ===============================================================================================


async def test_enqueue_and_result(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("send_email")
    async def send_email(email: Email) -> str:
        runs.add("send", email.to)
        return f"sent {email.subject!r} to {email.to}"

    @jobs.task("receipt")
    def receipt(email: Email) -> Receipt:  # a plain def: runs on the dispatcher's threads
        runs.add("receipt", threading.get_ident())
        return Receipt(to=email.to, chars=len(email.subject))

    @jobs.task("ping")
    async def ping() -> dict[str, int]:
        return {"pong": 1}

    assert jobs.tasks == ["ping", "receipt", "send_email"]
    async with jobs:
        a = await jobs.enqueue("send_email", Email(to="a@b.c", subject="hi"))
        b = await jobs.enqueue("receipt", {"to": "x@y.z", "subject": "hello"})  # a dict, validated into Email
        c = await jobs.enqueue("ping")
        assert all(isinstance(i, str) and i for i in (a, b, c)) and len({a, b, c}) == 3
        assert await jobs.result(a, timeout=5) == "sent 'hi' to a@b.c"
        value = await jobs.result(b, timeout=5)
        assert type(value) is Receipt and value == Receipt(to="x@y.z", chars=5)  # the return annotation
        assert await jobs.result(c, timeout=5) == {"pong": 1}
        assert await jobs.result(a, timeout=5) == "sent 'hi' to a@b.c"  # kept: readable again
        loop_thread = threading.get_ident()
    assert runs.values("send") == ["a@b.c"]
    (thread,) = runs.values("receipt")
    assert thread != loop_thread


async def test_enqueue_many(backend: Backend) -> None:
    jobs = backend(max_workers=4)
    runs = Runs()

    @jobs.task("double")
    async def double(num: Num) -> int:
        runs.add("double", num.n)
        return num.n * 2

    async with jobs:
        ids = await jobs.enqueue_many("double", [Num(n=i) for i in range(20)])
        assert len(ids) == 20 and len(set(ids)) == 20
        assert [await jobs.result(i, timeout=5) for i in ids] == [i * 2 for i in range(20)]
        more = await jobs.enqueue_many("double", ({"n": i} for i in range(100, 103)))  # any iterable, dicts
        assert [await jobs.result(i, timeout=5) for i in more] == [200, 202, 204]
        assert await jobs.enqueue_many("double", []) == []
        with pytest.raises(TypeError, match=r"double.*#2"):  # one payload that does not fit: nothing queued
            await jobs.enqueue_many("double", [Num(n=1000), {"n": 1001}, {"n": "not a number"}])
        await anyio.sleep(0.15)
    assert sorted(runs.values("double")) == [*range(20), 100, 101, 102]


async def test_retries_run_retries_plus_one_times_with_exponential_backoff(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("flaky", retries=2, backoff=(0.1, 10.0))
    async def flaky(num: Num) -> int:
        runs.add("flaky", time.monotonic())
        if runs.count("flaky") < 3:
            raise ValueError("not yet")
        return num.n

    async with jobs:
        task_id = await jobs.enqueue("flaky", Num(n=7))
        assert await jobs.result(task_id, timeout=10) == 7
    times = runs.values("flaky")
    assert len(times) == 3
    first, second = gaps(times)
    # Each retry waits at least half its step: 0.1 s, then 0.2 s (doubling).
    assert first >= 0.05 - 0.005, first
    assert second >= 0.1 - 0.005, second


async def test_retries_exhausted_fails_after_retries_plus_one_runs(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("always_fails", retries=2, backoff=(0.01, 0.02))
    async def always_fails() -> None:
        runs.add("run")
        raise RuntimeError("still broken")

    async with jobs:
        task_id = await jobs.enqueue("always_fails")
        with pytest.raises(TaskFailed) as info:
            await jobs.result(task_id, timeout=10)
        assert info.value.error_type == "RuntimeError" and info.value.message == "still broken"
        await anyio.sleep(0.15)  # no fourth run
        assert runs.count("run") == 3
        (letter,) = await jobs.dead_letters()
        assert letter.id == task_id and letter.attempts == 3


async def test_backoff_is_capped(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("capped", retries=6, backoff=(0.03, 0.03))
    async def capped() -> None:
        runs.add("run", time.monotonic())
        raise RuntimeError("again")

    async with jobs:
        task_id = await jobs.enqueue("capped")
        with pytest.raises(TaskFailed):
            await jobs.result(task_id, timeout=15)
    steps = gaps(runs.values("run"))
    assert len(steps) == 6
    assert min(steps) >= 0.015 - 0.005, steps
    # Uncapped, the last wait would be at least 0.03 * 2**5 / 2 = 0.48 s; capped at most 0.03 s
    # (Redis adds up to 0.25 s per retry: its schedule is polled every 0.25 s).
    assert max(steps) < 0.45, steps
    if backend.kind == "memory":  # Redis polls its schedule every 0.25 s, which hides the jitter
        assert max(steps) - min(steps) > 0.002, steps  # jittered: not one fixed delay


async def test_a_run_past_its_timeout_fails_with_timeout_error_and_is_retried(backend: Backend) -> None:
    # task_timeout=1.0 keeps the monitor looking every 0.1 s (a longer one hides a bug: see the next test).
    jobs = backend(task_timeout=1.0)
    runs = Runs()

    @jobs.task("hangs", retries=1, timeout=0.1, backoff=(0.01, 0.01))
    async def hangs() -> None:
        runs.add("hangs")
        await anyio.sleep(30)

    @jobs.task("plain_hangs", timeout=0.1)
    def plain_hangs() -> None:
        runs.add("plain_hangs")
        time.sleep(0.4)

    async with jobs:
        started = time.monotonic()
        task_id = await jobs.enqueue("hangs")
        with pytest.raises(TaskFailed) as info:
            await jobs.result(task_id, timeout=10)
        assert info.value.error_type == "TimeoutError"
        assert time.monotonic() - started < 5  # not the 30 s of the task
        assert runs.count("hangs") == 2  # retried like any failure
        plain_id = await jobs.enqueue("plain_hangs")
        with pytest.raises(TaskFailed) as info:
            await jobs.result(plain_id, timeout=10)
        assert info.value.error_type == "TimeoutError"
        (letter, plain_letter) = await jobs.dead_letters()
        assert (letter.id, letter.attempts) == (task_id, 2) and "TimeoutError" in letter.error
        assert plain_letter.id == plain_id


async def test_a_short_task_timeout_fires_promptly(backend: Backend) -> None:
    jobs = backend(task_timeout=10.0)  # the dispatcher's own limit is long; the task's is short
    release = anyio.Event()

    @jobs.task("hangs", timeout=0.1)
    async def hangs() -> None:
        await release.wait()

    async with jobs:
        try:
            task_id = await jobs.enqueue("hangs")
            with pytest.raises(TaskFailed) as info:  # TimeoutError here: no outcome within 0.5 s
                await jobs.result(task_id, timeout=0.5)
            assert info.value.error_type == "TimeoutError"
        finally:
            release.set()


async def test_timeout_none_means_the_dispatchers_task_timeout(backend: Backend) -> None:
    jobs = backend(task_timeout=0.2)

    @jobs.task("hangs")  # timeout=None: the dispatcher's 0.2 s
    async def hangs() -> None:
        await anyio.sleep(30)

    async with jobs:
        task_id = await jobs.enqueue("hangs")
        with pytest.raises(TaskFailed) as info:
            await jobs.result(task_id, timeout=10)
        assert info.value.error_type == "TimeoutError"


async def test_delay_and_at_schedule_the_run(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("stamp")
    async def stamp(num: Num) -> float:
        now = time.time()
        runs.add("stamp", num.n)
        return now

    async with jobs:
        t0 = time.time()
        # A delay long enough that a slow machine cannot blur "at once" and "later".
        delayed = await jobs.enqueue("stamp", Num(n=1), delay=1.0)
        plus5 = datetime.timezone(datetime.timedelta(hours=5))  # any aware datetime will do
        at = await jobs.enqueue("stamp", Num(n=2), at=datetime.datetime.now(plus5) + datetime.timedelta(seconds=1.0))
        past = await jobs.enqueue("stamp", Num(n=3), at=datetime.datetime.now(UTC) - datetime.timedelta(seconds=5))
        zero = await jobs.enqueue("stamp", Num(n=4), delay=0)
        assert await jobs.result(past, timeout=5) - t0 < 0.8  # due already: runs at once
        assert await jobs.result(zero, timeout=5) - t0 < 0.8
        if time.time() - t0 < 0.9:  # (a stalled machine may have reached the scheduled ones' time)
            assert sorted(runs.values("stamp")) == [3, 4]  # the scheduled ones have not run yet
        assert await jobs.result(delayed, timeout=5) - t0 >= 1.0 - 0.01
        assert await jobs.result(at, timeout=5) - t0 >= 1.0 - 0.01
    assert sorted(runs.values("stamp")) == [1, 2, 3, 4]


async def test_an_idempotency_key_returns_the_first_id_and_runs_nothing(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("welcome")
    async def welcome(num: Num) -> int:
        runs.add("welcome", num.n)
        return num.n

    async with jobs:
        first = await jobs.enqueue("welcome", Num(n=1), key="welcome:42")
        assert await jobs.enqueue("welcome", Num(n=2), key="welcome:42") == first
        assert await jobs.result(first, timeout=5) == 1
        assert await jobs.enqueue("welcome", Num(n=3), key="welcome:42") == first  # also after it ran
        other = await jobs.enqueue("welcome", Num(n=4), key="welcome:43")
        assert other != first and await jobs.result(other, timeout=5) == 4
        # Concurrent enqueues with one key: one task.
        ids: list[str] = []

        async def add(n: int) -> None:
            ids.append(await jobs.enqueue("welcome", Num(n=n), key="race"))

        async with anyio.create_task_group() as tg:
            for n in (10, 11, 12):
                tg.start_soon(add, n)
        assert len(set(ids)) == 1
        assert await jobs.result(ids[0], timeout=5) in (10, 11, 12)
        # A scheduled task holds its key too.
        later = await jobs.enqueue("welcome", Num(n=20), key="later", delay=30)
        assert await jobs.enqueue("welcome", Num(n=21), key="later") == later
        await anyio.sleep(0.2)
    ran = runs.values("welcome")
    assert len(ran) == 3 and {1, 4} <= set(ran) and len(set(ran) & {10, 11, 12}) == 1, ran


async def test_keep_result_zero_keeps_nothing(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("work")
    async def work(num: Num) -> int:
        runs.add("work", num.n)
        if num.n < 0:
            raise ValueError("negative")
        return num.n

    async with jobs:
        ok = await jobs.enqueue("work", Num(n=1), keep_result=0)
        failing = await jobs.enqueue("work", Num(n=-1), keep_result=0)
        await wait_until(lambda: runs.count("work") == 2)
        await anyio.sleep(0.05)
        for task_id, limit in ((ok, 0.3), (failing, 0.1)):  # a failure is not kept either
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await jobs.result(task_id, timeout=limit)
            assert time.monotonic() - started < limit + 0.5


async def test_kept_results_and_idempotency_keys_expire(backend: Backend) -> None:
    jobs = backend(key_ttl=0.3)  # Redis keeps keys whole seconds: at least 1 s
    expired = 1.1 if backend.kind == "redis" else 0.4

    @jobs.task("work")
    async def work(num: Num) -> int:
        return num.n

    async with jobs:
        first = await jobs.enqueue("work", Num(n=1), key="k", keep_result=0.3)
        assert await jobs.result(first, timeout=5) == 1
        await anyio.sleep(expired)
        with pytest.raises(TimeoutError):
            await jobs.result(first, timeout=0.3)
        second = await jobs.enqueue("work", Num(n=2), key="k")  # the key's time to live is over
        assert second != first and await jobs.result(second, timeout=5) == 2


async def test_a_failing_task_raises_task_failed_with_the_remote_error(backend: Backend) -> None:
    jobs = backend()

    @jobs.task("explode")
    async def explode(email: Email) -> str:
        raise ValueError(f"cannot send to {email.to}")

    @jobs.task("plain_explode")
    def plain_explode(email: Email) -> str:
        raise KeyError(email.subject)

    async with jobs:
        task_id = await jobs.enqueue("explode", Email(to="x@y.z", subject="s"))
        with pytest.raises(TaskFailed) as info:
            await jobs.result(task_id, timeout=5)
        failed = info.value
        assert isinstance(failed, Exception)
        assert (failed.error_type, failed.message) == ("ValueError", "cannot send to x@y.z")
        assert "ValueError: cannot send to x@y.z" in failed.traceback and "explode" in failed.traceback
        assert "explode" in str(failed) and "cannot send to x@y.z" in str(failed)
        with pytest.raises(TaskFailed) as info:  # read again: the failure is kept like a value
            await jobs.result(task_id, timeout=5)
        plain_id = await jobs.enqueue("plain_explode", Email(to="x@y.z", subject="missing"))
        with pytest.raises(TaskFailed) as info:
            await jobs.result(plain_id, timeout=5)
        assert info.value.error_type == "KeyError" and "missing" in info.value.message
        assert "plain_explode" in info.value.traceback


async def test_a_result_json_cannot_carry_fails_the_run(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("weird", retries=1, backoff=(0.01, 0.01))
    async def weird() -> Any:
        runs.add("weird")
        return object()

    async with jobs:
        task_id = await jobs.enqueue("weird")
        with pytest.raises(TaskFailed) as info:
            await jobs.result(task_id, timeout=5)
        assert info.value.error_type == "TypeError"
        assert runs.count("weird") == 2  # a failure like any other: retried


async def test_poison_payloads(backend: Backend) -> None:
    jobs = backend(max_deliveries=1)  # a task no replica knows is passed on once, then dead
    runs = Runs()

    @jobs.task("send_email", retries=3, backoff=(0.01, 0.01))  # retries: still none for poison
    async def send_email(email: Email) -> str:
        runs.add("send", email.to)
        return email.to

    async with jobs:
        # Through the API a payload that does not fit never gets written.
        with pytest.raises(TypeError, match="send_email"):
            await jobs.enqueue("send_email", {"to": 1})
        if backend.kind == "memory":
            return  # nothing else can put a payload in front of a memory consumer
        # A hand-written entry (another replica, older code): poison, dead-lettered at once.
        assert backend.url is not None
        redis_command(backend.url, "XADD", backend.stream, "*", "m", entry("poison-1", "send_email", {"to": 1}))
        # A task this replica does not know goes back for another replica (a rolling deploy), and
        # after max_deliveries such passes it is dead too.
        redis_command(backend.url, "XADD", backend.stream, "*", "m", entry("poison-2", "no_such_task", None))
        redis_command(backend.url, "XADD", backend.stream, "*", "m", "this is not JSON")
        letters = await eventually(jobs.dead_letters, lambda found: len(found) == 3)
        by_id = {letter.id: letter for letter in letters}
        bad = by_id["poison-1"]
        assert (bad.task, bad.payload, bad.attempts) == ("send_email", {"to": 1}, 0)
        assert "subject" in bad.error  # the validation error says what is wrong
        assert "no_such_task" in by_id["poison-2"].error
        with pytest.raises(TaskFailed) as info:
            await jobs.result("poison-1", timeout=5)
        assert "subject" in info.value.message
        # The dispatcher carries on; the poison is not retried.
        ok = await jobs.enqueue("send_email", Email(to="fine@b.c", subject="s"))
        assert await jobs.result(ok, timeout=5) == "fine@b.c"
        await anyio.sleep(0.15)
        assert len(await jobs.dead_letters()) == 3
        assert runs.values("send") == ["fine@b.c"]
        stats = jobs.stats()
        assert stats.retried == 0 and stats.dead_lettered == 3


async def test_dead_letters_and_retry_dead(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()
    broken = {"yes": True}

    @jobs.task("explode", retries=1, backoff=(0.01, 0.01))
    async def explode(email: Email) -> str:
        runs.add("explode", email.to)
        if broken["yes"]:
            raise ValueError(f"cannot send to {email.to}")
        return "sent"

    async with jobs:
        assert await jobs.dead_letters() == []
        task_id = await jobs.enqueue("explode", Email(to="x@y.z", subject="s"))
        with pytest.raises(TaskFailed):
            await jobs.result(task_id, timeout=5)
        assert runs.count("explode") == 2
        (letter,) = await jobs.dead_letters()
        assert isinstance(letter, DeadLetter)
        assert (letter.id, letter.task, letter.payload, letter.attempts) == (
            task_id,
            "explode",
            {"to": "x@y.z", "subject": "s"},
            2,
        )
        assert "ValueError" in letter.error and "cannot send to x@y.z" in letter.error
        # Back into the queue: the old failure is dropped, so result() waits for the new outcome,
        # and attempts start again (two more runs).
        await jobs.retry_dead(task_id)
        with pytest.raises(TaskFailed):
            await jobs.result(task_id, timeout=5)
        assert runs.count("explode") == 4
        (again,) = await jobs.dead_letters()
        assert (again.id, again.attempts) == (task_id, 2)
        broken["yes"] = False
        await jobs.retry_dead(task_id)
        assert await jobs.result(task_id, timeout=5) == "sent"
        assert await jobs.dead_letters() == []
        assert runs.count("explode") == 5
        with pytest.raises(LookupError, match=task_id):  # not dead any more
            await jobs.retry_dead(task_id)
        with pytest.raises(LookupError, match="no-such-id"):
            await jobs.retry_dead("no-such-id")


async def test_bad_input_is_refused_with_an_error_naming_it(backend: Backend) -> None:
    jobs = backend()
    runs = Runs()

    @jobs.task("send_email")
    async def send_email(email: Email) -> None:
        runs.add("send")

    @jobs.task("ping")
    async def ping() -> None:
        runs.add("ping")

    good = Email(to="a@b.c", subject="hi")
    soon = datetime.datetime.now(UTC) + datetime.timedelta(seconds=5)
    async with jobs:
        with pytest.raises(LookupError) as lookup:
            await jobs.enqueue("sendmail", good)
        assert "sendmail" in str(lookup.value) and "send_email" in str(lookup.value) and "ping" in str(lookup.value)
        with pytest.raises(LookupError, match="sendmail"):
            await jobs.enqueue_many("sendmail", [good])
        for payload in ({"to": "a@b.c"}, Num(n=1), None, "a@b.c"):
            with pytest.raises(TypeError, match="send_email"):
                await jobs.enqueue("send_email", payload)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="ping"):
            await jobs.enqueue("ping", good)
        with pytest.raises(TypeError, match="send_email"):
            await jobs.enqueue_many("send_email", [good, {"subject": "no to"}])
        with pytest.raises(TypeError):
            await jobs.enqueue("send_email", good, delay=1.0, at=soon)
        with pytest.raises(ValueError):
            await jobs.enqueue("send_email", good, at=datetime.datetime.now())  # naive
        with pytest.raises(ValueError):
            await jobs.enqueue("send_email", good, delay=-1.0)
        with pytest.raises(ValueError):
            await jobs.enqueue("send_email", good, keep_result=-1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await jobs.result("not-an-id", timeout=0.2)
        assert time.monotonic() - started < 1.0
        await anyio.sleep(0.1)
        assert runs.events == []  # nothing refused was written
        stats = jobs.stats()
        assert stats.accepted == 0 and stats.scheduled in (0, None)
        if backend.kind == "redis":
            assert backend.url is not None
            assert redis_command(backend.url, "XLEN", backend.stream) == 0
            assert redis_command(backend.url, "ZCARD", f"{backend.stream}:schedule") == 0


async def test_call_runs_any_callable_through_the_pool(backend: Backend) -> None:
    jobs = backend(max_processes=1, task_timeout=0.3)

    async def add(a: int, b: int, *, c: int = 0) -> int:
        await anyio.sleep(0)
        return a + b + c

    def plain(x: int) -> tuple[int, int]:
        return threading.get_ident(), x * 2

    class Oops(Exception):
        pass

    async def fails() -> None:
        raise Oops("async oops")

    def plain_fails() -> None:
        raise KeyError("plain oops")

    async def slow() -> None:
        await anyio.sleep(5)

    def plain_slow() -> None:
        time.sleep(0.4)

    async with jobs:
        assert await jobs.call(add, 1, 2, c=3) == 6
        thread, doubled = await jobs.call(plain, 21)
        assert doubled == 42 and thread != threading.get_ident()
        with pytest.raises(Oops, match="async oops"):
            await jobs.call(fails)
        with pytest.raises(KeyError, match="plain oops"):
            await jobs.call(plain_fails)
        for function, limit in ((slow, 0.1), (plain_slow, 0.1), (slow, None)):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                if limit is None:
                    await jobs.call(function)  # the dispatcher's task_timeout (0.3 s)
                else:
                    await jobs.call(function, timeout=limit)
            assert time.monotonic() - started < 0.75, function
        assert await jobs.call(add, 1, 1, timeout=None) == 2  # None: no limit
        with pytest.raises(TypeError):
            await jobs.call(add, 1, 2, process=True)  # async functions do not go to processes
        with pytest.raises(TypeError):
            await jobs.call("not callable")  # type: ignore[arg-type]


async def test_call_process_true_needs_max_processes(backend: Backend) -> None:
    jobs = backend()
    async with jobs:
        with pytest.raises(TypeError, match="max_processes"):
            await jobs.call(pid_and_product, 1, 2, process=True)


async def test_worker_processes_for_named_tasks_and_calls(backend: Backend) -> None:
    jobs = backend(max_processes=1)
    jobs.task("square", process=True)(square_in_process)
    async with jobs:
        task_id = await jobs.enqueue("square", Num(n=7))
        value = await jobs.result(task_id, timeout=20)
        assert value["square"] == 49 and value["pid"] != os.getpid()
        pid, product = await jobs.call(pid_and_product, 6, 7, process=True, timeout=10)
        assert product == 42 and pid != os.getpid()
        with pytest.raises(ValueError, match="from a process"):
            await jobs.call(fail_in_process, "from a process", process=True, timeout=10)
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # last: the overrunning worker process is killed
            await jobs.call(sleep_in_process, 10, process=True, timeout=0.2)
        assert time.monotonic() - started < 2


async def test_stats_fields(backend: Backend) -> None:
    jobs = backend()

    @jobs.task("later")
    async def later() -> None:
        pass

    @jobs.task("fails", retries=1, backoff=(0.01, 0.01))
    async def fails() -> None:
        raise RuntimeError("no")

    async with jobs:
        assert isinstance(jobs.stats(), DispatcherStats)
        await jobs.enqueue("later", delay=30)
        failing = await jobs.enqueue("fails")
        with pytest.raises(TaskFailed):
            await jobs.result(failing, timeout=5)
        if backend.kind == "memory":
            stats = jobs.stats()
            assert (stats.scheduled, stats.retried, stats.dead_lettered) == (1, 1, 1)
            assert (stats.stream_length, stats.pending, stats.lag, stats.reclaimed) == (None, None, None, None)
        else:
            await wait_until(lambda: jobs.stats().scheduled == 1 and jobs.stats().stream_length == 0, limit=3)
            stats = jobs.stats()
            assert (stats.retried, stats.dead_lettered, stats.reclaimed) == (1, 1, 0)
            assert (stats.stream_length, stats.pending, stats.lag) == (0, 0, 0)
    if backend.kind == "memory":
        assert jobs.stats().handed_back == 1  # the scheduled task is dropped at the stop, counted


# ===============================================================================================
# Memory only
# ===============================================================================================


async def test_memory_quit_drain_runs_everything_accepted_and_drops_what_is_not_due() -> None:
    jobs = Dispatcher(max_workers=2, task_timeout=5.0)
    runs = Runs()

    @jobs.task("work")
    async def work(num: Num) -> int:
        await anyio.sleep(0.01)
        runs.add("work", num.n)
        return num.n

    async def legacy() -> None:  # dispatch(callable) is unchanged on memory
        runs.add("legacy")

    with structlog.testing.capture_logs() as logs:
        async with jobs:
            await jobs.enqueue_many("work", [Num(n=i) for i in range(10)])
            await jobs.enqueue("work", Num(n=99), delay=30)
            assert jobs.dispatch(legacy)
            await jobs.submit(legacy)
        # Leaving the block quits with drain=True.
    assert sorted(runs.values("work")) == list(range(10))
    assert runs.count("legacy") == 2
    assert jobs.stats().handed_back == 1
    assert any("dropped" in str(e["event"]) for e in logs), logs


# ===============================================================================================
# Redis only
# ===============================================================================================


def redis_dispatcher(url: str, stream: str, **kwargs: Any) -> Dispatcher:
    kwargs.setdefault("max_workers", 8)
    kwargs.setdefault("task_timeout", 5.0)
    kwargs.setdefault("lease", 1.0)
    return Dispatcher(backend="redis", redis_url=url, stream=stream, **kwargs)


def new_stream() -> str:
    return f"test:{uuid.uuid4().hex}"


async def test_redis_dispatch_and_submit_refuse_callables(redis_url: str) -> None:
    jobs = redis_dispatcher(redis_url, new_stream())

    async def task() -> None:
        pass

    with pytest.raises(TypeError, match=r"task\(") as info:
        jobs.dispatch(task)
    assert "register" in str(info.value)
    with pytest.raises(TypeError, match=r"task\("):
        await jobs.submit(task)
    async with jobs:  # running changes nothing
        with pytest.raises(TypeError, match=r"task\("):
            jobs.dispatch(task)
        with pytest.raises(TypeError, match=r"task\("):
            await jobs.submit(task)


async def test_two_streams_on_one_redis_never_see_each_other(redis_url: str) -> None:
    runs = Runs()
    stream_a, stream_b = new_stream(), new_stream()
    a, b = redis_dispatcher(redis_url, stream_a), redis_dispatcher(redis_url, stream_b)
    for jobs, name in ((a, "A"), (b, "B")):

        def register(jobs: Dispatcher = jobs, name: str = name) -> None:
            @jobs.task("echo")
            async def echo(num: Num) -> str:
                runs.add(name, num.n)
                return f"{name}:{num.n}"

            @jobs.task("boom")
            async def boom(num: Num) -> None:
                runs.add(name, num.n)
                raise RuntimeError("boom")

        register()
    async with a, b:
        ka = await a.enqueue("echo", Num(n=1), key="same")
        kb = await b.enqueue("echo", Num(n=2), key="same")
        assert ka != kb  # the key is the stream's own
        assert await a.result(ka, timeout=5) == "A:1"
        assert await b.result(kb, timeout=5) == "B:2"
        with pytest.raises(TimeoutError):
            await b.result(ka, timeout=0.2)
        with pytest.raises(TimeoutError):
            await a.result(kb, timeout=0.2)
        dead = await a.enqueue("boom", Num(n=3))
        with pytest.raises(TaskFailed):
            await a.result(dead, timeout=5)
        assert [letter.id for letter in await a.dead_letters()] == [dead]
        assert await b.dead_letters() == []
        with pytest.raises(LookupError):
            await b.retry_dead(dead)
        scheduled = await b.enqueue("echo", Num(n=4), delay=30)
        await anyio.sleep(0.1)
    assert sorted(runs.values("A")) == [1, 3] and runs.values("B") == [2]
    keys = redis_command(redis_url, "KEYS", "*")
    assert keys and all(k.startswith((stream_a.encode(), stream_b.encode())) for k in keys), keys
    assert redis_command(redis_url, "ZCARD", f"{stream_b}:schedule") == 1  # B's, waiting
    assert redis_command(redis_url, "ZCARD", f"{stream_a}:schedule") == 0
    assert scheduled


def register_worker(jobs: Dispatcher, name: str, runs: Runs, release: anyio.Event) -> None:
    """``work``: records (consumer, n); n == 0 waits for ``release``."""

    @jobs.task("work")
    async def work(num: Num) -> str:
        runs.add("start", (name, num.n))
        if num.n == 0:
            await release.wait()
        runs.add("done", (name, num.n))
        return name


async def test_redis_graceful_stop_finishes_running_and_hands_back_read_tasks_at_once(redis_url: str) -> None:
    # A: two workers, one held by a call(); it starts the long task 0 on the other, reads task 1 and
    # has no worker for it. A graceful quit must hand 1 back at once (A's lease is long: no reclaim
    # would bring it back during the test), finish 0, and B, on the same stream, runs 1, 2 and 3.
    stream = new_stream()
    runs = Runs()
    release_long, release_call = anyio.Event(), anyio.Event()
    a = redis_dispatcher(redis_url, stream, min_workers=1, max_workers=2, lease=30.0, task_timeout=None)
    b = redis_dispatcher(redis_url, stream, max_workers=4, lease=30.0)
    register_worker(a, "A", runs, release_long)
    register_worker(b, "B", runs, anyio.Event())
    call_started = anyio.Event()

    async def hold() -> str:
        call_started.set()
        await release_call.wait()
        return "held"

    with anyio.fail_after(20):
        try:
            async with a, anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(a.call, hold, timeout=None))
                await call_started.wait()
                long_id = await a.enqueue("work", Num(n=0))
                await wait_until(lambda: runs.values("start") == [("A", 0)])
                ids = await a.enqueue_many("work", [Num(n=i) for i in (1, 2, 3)])
                await wait_until(lambda: a.stats().queued == 1)  # task 1: read, waiting for a worker
                tg.start_soon(a.quit)
                await wait_until(lambda: a.stats().status != Dispatcher.RUNNING)
                async with b:
                    assert [await b.result(i, timeout=5) for i in ids] == ["B", "B", "B"]
                    assert sorted(runs.values("done")) == [("B", 1), ("B", 2), ("B", 3)]
                    assert runs.values("start")[0] == ("A", 0) and ("A", 0) not in runs.values("done")
                    release_long.set()
                    release_call.set()
                    assert await b.result(long_id, timeout=5) == "A"  # finished on A, acknowledged
        finally:
            release_long.set()
            release_call.set()
    assert sorted(runs.values("start")) == [("A", 0), ("B", 1), ("B", 2), ("B", 3)]  # each once
    assert a.stats().handed_back == 1
    assert redis_command(redis_url, "XLEN", stream) == 0
    assert redis_command(redis_url, "XPENDING", stream, GROUP)[0] == 0


async def test_redis_graceful_stop_with_one_worker_leaves_the_rest_to_another_consumer(redis_url: str) -> None:
    stream = new_stream()
    runs = Runs()
    release = anyio.Event()
    a = redis_dispatcher(redis_url, stream, max_workers=1, lease=30.0)
    b = redis_dispatcher(redis_url, stream, max_workers=4, lease=30.0)
    register_worker(a, "A", runs, release)
    register_worker(b, "B", runs, anyio.Event())
    with anyio.fail_after(20):
        async with a:
            ids = await a.enqueue_many("work", [Num(n=i) for i in range(6)])
            await wait_until(lambda: runs.values("start") == [("A", 0)])
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.quit)
                await anyio.sleep(0.3)  # the quit is under way; task 0 still runs
                assert runs.values("start") == [("A", 0)]
                release.set()
        assert runs.values("done") == [("A", 0)]
        async with b:
            assert [await b.result(i, timeout=5) for i in ids] == ["A", "B", "B", "B", "B", "B"]
    assert sorted(runs.values("start")) == [("A", 0), *(("B", i) for i in range(1, 6))]
    assert redis_command(redis_url, "XLEN", stream) == 0
    assert redis_command(redis_url, "XPENDING", stream, GROUP)[0] == 0


async def test_redis_graceful_stop_hands_back_plain_tasks_waiting_for_a_thread(redis_url: str) -> None:
    stream = new_stream()
    runs = Runs()
    gate = threading.Event()
    a = redis_dispatcher(redis_url, stream, max_workers=4, max_threads=1, lease=30.0, task_timeout=None)
    b = redis_dispatcher(redis_url, stream, max_workers=4, lease=30.0)

    for jobs, name in ((a, "A"), (b, "B")):

        def register(jobs: Dispatcher = jobs, name: str = name) -> None:
            @jobs.task("plain_work")
            def plain_work(num: Num) -> str:
                runs.add("start", (name, num.n))
                if num.n == 0:
                    gate.wait(10)
                return name

        register()
    with anyio.fail_after(30):
        try:
            async with a, anyio.create_task_group() as tg:
                await a.enqueue("plain_work", Num(n=0))
                await wait_until(lambda: runs.values("start") == [("A", 0)])
                ids = await a.enqueue_many("plain_work", [Num(n=i) for i in (1, 2, 3)])
                await wait_until(lambda: a.stats().queued == 3)  # read; waiting for the one thread
                tg.start_soon(a.quit)
                await wait_until(lambda: a.stats().status != Dispatcher.RUNNING)
                try:
                    async with b:
                        await anyio.sleep(0.5)  # handed back at once, B would have run 1, 2 and 3 by now
                        gate.set()
                        results = [await b.result(i, timeout=5) for i in ids]
                finally:
                    gate.set()
        finally:
            gate.set()
    assert sorted(runs.values("start")) == [("A", 0), ("B", 1), ("B", 2), ("B", 3)]
    assert results == ["B", "B", "B"]


async def test_redis_reclaims_a_dead_consumers_entries_and_dead_letters_too_many_deliveries(
    redis_url: str,
) -> None:
    stream = new_stream()
    runs = Runs()
    # A consumer that read two entries and died: one delivered once, one already twice.
    redis_command(redis_url, "XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
    redis_command(redis_url, "XADD", stream, "*", "m", entry("ghost-1", "work", {"n": 1}))
    second = redis_command(redis_url, "XADD", stream, "*", "m", entry("ghost-2", "work", {"n": 2}))
    redis_command(redis_url, "XREADGROUP", "GROUP", GROUP, "ghost", "COUNT", "10", "STREAMS", stream, ">")
    redis_command(redis_url, "XCLAIM", stream, GROUP, "ghost", "0", second)  # a second delivery
    jobs = redis_dispatcher(redis_url, stream, lease=0.3, max_deliveries=2)

    @jobs.task("work")
    async def work(num: Num) -> int:
        runs.add("work", num.n)
        return num.n

    async with jobs:
        assert await jobs.result("ghost-1", timeout=5) == 1  # its second delivery: runs
        (letter,) = await eventually(jobs.dead_letters, lambda found: len(found) == 1)
        assert letter.id == "ghost-2" and letter.payload == {"n": 2}
        assert "deliver" in letter.error.lower()
        with pytest.raises(TaskFailed):
            await jobs.result("ghost-2", timeout=5)
        stats = jobs.stats()
        assert stats.reclaimed == 2 and stats.dead_lettered == 1
    assert runs.values("work") == [1]
    assert redis_command(redis_url, "XPENDING", stream, GROUP)[0] == 0


async def test_redis_lease_is_renewed_while_a_long_task_runs(redis_url: str) -> None:
    stream = new_stream()
    runs = Runs()
    a = redis_dispatcher(redis_url, stream, lease=0.25)
    b = redis_dispatcher(redis_url, stream, lease=0.25)
    for jobs, name in ((a, "A"), (b, "B")):

        def register(jobs: Dispatcher = jobs, name: str = name) -> None:
            @jobs.task("long")
            async def long() -> str:
                runs.add("long", name)
                await anyio.sleep(0.75)  # three leases
                return name

        register()
    async with a, b:
        task_id = await a.enqueue("long")
        assert await a.result(task_id, timeout=5) in ("A", "B")
        await anyio.sleep(0.1)
        assert a.stats().reclaimed == 0 and b.stats().reclaimed == 0
    assert runs.count("long") == 1


async def test_redis_producer_only_and_results_read_elsewhere(redis_url: str) -> None:
    stream = new_stream()
    producer = redis_dispatcher(redis_url, stream, consume=False)
    consumer = redis_dispatcher(redis_url, stream)
    reader = redis_dispatcher(redis_url, stream, consume=False)  # knows no task: results as JSON data

    for jobs in (producer, consumer):

        def register(jobs: Dispatcher = jobs) -> None:
            @jobs.task("receipt")
            async def receipt(email: Email) -> Receipt:
                return Receipt(to=email.to, chars=len(email.subject))

        register()
    async with producer, reader:
        ids = await producer.enqueue_many("receipt", [Email(to=f"{i}@x", subject="s" * i) for i in range(3)])
        await anyio.sleep(0.1)
        with pytest.raises(TimeoutError):  # nobody consumes
            await producer.result(ids[0], timeout=0.2)
        await wait_until(lambda: producer.stats().stream_length == 3 and producer.stats().lag == 3, limit=3)
        assert producer.stats().pending == 0
        async with consumer:
            values = [await producer.result(i, timeout=5) for i in ids]
        assert values == [Receipt(to=f"{i}@x", chars=i) for i in range(3)]
        assert await reader.result(ids[2], timeout=5) == {"to": "2@x", "chars": 2}


async def test_redis_a_scheduled_task_survives_the_stop(redis_url: str) -> None:
    stream = new_stream()
    runs = Runs()
    a, b = redis_dispatcher(redis_url, stream), redis_dispatcher(redis_url, stream)
    for jobs, name in ((a, "A"), (b, "B")):

        def register(jobs: Dispatcher = jobs, name: str = name) -> None:
            @jobs.task("later")
            async def later() -> str:
                runs.add("later", name)
                return name

        register()
    async with a:
        task_id = await a.enqueue("later", delay=0.6)
    assert runs.values("later") == []
    async with b:
        assert await b.result(task_id, timeout=5) == "B"


async def test_redis_an_unwind_leaves_the_running_task_to_be_reclaimed(redis_url: str) -> None:
    # The stop outlives its timeout: the run is cancelled mid-task. The entry stays unacknowledged,
    # so once A's lease lapses B reclaims and runs it: at least once, nothing lost.
    stream = new_stream()
    runs = Runs()
    app = test_app("t")
    a = app.register(
        redis_dispatcher(redis_url, stream, lease=0.3, task_timeout=None), name="jobs", shutdown_timeout=0.2
    )
    b = redis_dispatcher(redis_url, stream, lease=0.3)

    @a.task("long")
    async def long_on_a() -> str:
        runs.add("long", "A")
        await anyio.sleep(30)
        return "A"

    @b.task("long")
    async def long_on_b() -> str:
        runs.add("long", "B")
        return "B"

    async with serving(app) as served:
        task_id = await a.enqueue("long")
        await wait_until(lambda: runs.values("long") == ["A"])
    assert served.status == 1  # the stop timed out
    async with b:
        assert await b.result(task_id, timeout=5) == "B"
        assert b.stats().reclaimed == 1
    assert runs.values("long") == ["A", "B"]
    assert redis_command(redis_url, "XPENDING", stream, GROUP)[0] == 0


async def test_async_with_enters_once_the_group_exists_and_an_empty_body_leaves_at_once(redis_url: str) -> None:
    # Regression: ``async with`` used to hand over before the backend served, so a body that
    # left at once raced the group's creation: the quit failed (no such group) and the exit
    # then waited forever for a run nobody ended. Now the group exists when the body starts.
    for _ in range(20):
        stream = new_stream()
        with anyio.fail_after(10):
            async with redis_dispatcher(redis_url, stream):
                groups = redis_command(redis_url, "XINFO", "GROUPS", stream)
                assert [dict(zip(g[::2], g[1::2], strict=True))[b"name"] for g in groups] == [GROUP.encode()]
    assert redis_command(redis_url, "XINFO", "CONSUMERS", stream, GROUP) == []  # it left the group


# -- under an App -------------------------------------------------------------------------------


async def test_app_settings_choose_redis_with_the_app_prefix_first(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = new_stream()
    monkeypatch.setenv("T_DISPATCHER_BACKEND", "redis")
    monkeypatch.setenv("DISPATCHER_BACKEND", "memory")  # the prefixed name is read first
    monkeypatch.setenv("T_REDIS_URL", redis_url)
    monkeypatch.setenv("T_DISPATCHER_STREAM", stream)
    monkeypatch.setenv("T_DISPATCHER_LEASE", "1.5")
    monkeypatch.setenv("T_DISPATCHER_MAX_DELIVERIES", "3")
    app = test_app("t")
    jobs = app.register(Dispatcher(max_workers=4), name="jobs", priority=1)

    @jobs.task("double")
    async def double(num: Num) -> int:
        return num.n * 2

    async def task() -> None:
        pass

    async with serving(app) as served:
        task_id = await jobs.enqueue("double", Num(n=21))
        assert await jobs.result(task_id, timeout=5) == 42
        assert redis_command(redis_url, "TYPE", stream) == b"stream"  # the stream of the setting
        with pytest.raises(TypeError, match=r"task\("):
            jobs.dispatch(task)
        opts = jobs.options
        assert (opts.backend, opts.stream, opts.lease, opts.max_deliveries) == ("redis", stream, 1.5, 3)
    assert served.status == 0, app.errors


async def test_app_consume_false_only_enqueues(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = new_stream()
    monkeypatch.setenv("DISPATCHER_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DISPATCHER_STREAM", stream)
    monkeypatch.setenv("DISPATCHER_CONSUME", "false")
    app = test_app("t")
    jobs = app.register(Dispatcher(), name="jobs", priority=1)
    runs = Runs()

    @jobs.task("work")
    async def work() -> None:
        runs.add("work")

    async with serving(app) as served:
        await jobs.enqueue("work")
        await anyio.sleep(0.4)
        assert redis_command(redis_url, "XLEN", stream) == 1
    assert served.status == 0, app.errors
    assert runs.events == []


async def test_app_keywords_override_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    app = test_app("t")
    jobs = app.register(Dispatcher(backend="memory"), name="jobs", priority=1)

    @jobs.task("double")
    async def double(num: Num) -> int:
        return num.n * 2

    async with serving(app) as served:
        assert await jobs.result(await jobs.enqueue("double", Num(n=2)), timeout=5) == 4
    assert served.status == 0, app.errors


async def test_app_redis_keywords_override_settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    stream, ignored = new_stream(), new_stream()
    monkeypatch.setenv("DISPATCHER_BACKEND", "redis")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.setenv("DISPATCHER_STREAM", ignored)
    monkeypatch.setenv("DISPATCHER_LEASE", "1.5")
    monkeypatch.setenv("DISPATCHER_KEY_TTL", "5")
    app = test_app("t")
    jobs = app.register(Dispatcher(redis_url=redis_url, stream=stream, lease=2.5), name="jobs", priority=1)

    @jobs.task("double")
    async def double(num: Num) -> int:
        return num.n * 2

    async with serving(app) as served:
        assert await jobs.result(await jobs.enqueue("double", Num(n=2)), timeout=5) == 4
        opts = jobs.options
        assert (opts.redis_url, opts.stream, opts.lease, opts.key_ttl) == (redis_url, stream, 2.5, 5.0)
    assert served.status == 0, app.errors
    assert redis_command(redis_url, "TYPE", stream) == b"stream"
    assert redis_command(redis_url, "EXISTS", ignored) == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCHER_BACKEND", "bogus"),
        ("T_DISPATCHER_BACKEND", "bogus"),
        ("DISPATCHER_LEASE", "0"),
        ("DISPATCHER_MAX_DELIVERIES", "0"),
        ("DISPATCHER_STREAM", "has space"),
        ("DISPATCHER_CONSUME", "maybe"),
        ("DISPATCHER_KEY_TTL", "-1"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
    ],
)
async def test_a_bad_setting_fails_boot_naming_it(variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, value)
    app = test_app("t")
    jobs = app.register(Dispatcher(), name="jobs", priority=1)

    @jobs.task("work")
    async def work() -> None:
        pass

    with anyio.fail_after(10):
        status = await app.serve()
    assert status == 1
    (error,) = app.errors
    assert isinstance(error.cause, ConfigError), error
    assert variable.removeprefix("T_") in str(error), str(error)


# -- constructor and registration mistakes (no event loop needed) ------------------------------


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("backend", "x"),
        ("redis_url", "http://127.0.0.1:6379"),
        ("stream", "has space"),
        ("stream", ""),
        ("lease", 0),
        ("lease", -1.0),
        ("max_deliveries", 0),
        ("consume", "yes"),
        ("key_ttl", 0),
        ("max_processes", 0),
    ],
)
def test_bad_dispatcher_keywords_raise_registration_error_naming_them(keyword: str, value: Any) -> None:
    with pytest.raises(RegistrationError, match=keyword):
        Dispatcher(**{keyword: value})


def _two_args(a: Email, b: Email) -> None: ...
def _int_arg(x: int) -> None: ...
def _bare_arg(x) -> None: ...  # type: ignore[no-untyped-def]
async def _async_fn(email: Email) -> None: ...
def _plain_fn(email: Email) -> None: ...


@pytest.mark.parametrize(
    ("name", "function", "options", "dispatcher"),
    [
        ("two_args", _two_args, {}, {}),
        ("int_arg", _int_arg, {}, {}),
        ("bare_arg", _bare_arg, {}, {}),
        ("negative_retries", _plain_fn, {"retries": -1}, {}),
        ("bad_backoff", _plain_fn, {"backoff": (2.0, 1.0)}, {}),
        ("bad_timeout", _plain_fn, {"timeout": 0}, {}),
        ("no_processes", _plain_fn, {"process": True}, {}),
        ("async_process", _async_fn, {"process": True}, {"max_processes": 1}),
    ],
)
def test_task_registration_mistakes_name_the_task(
    name: str, function: Any, options: dict[str, Any], dispatcher: dict[str, Any]
) -> None:
    jobs = Dispatcher(**dispatcher)
    with pytest.raises(RegistrationError, match=name):
        jobs.task(name, **options)(function)
    assert jobs.tasks == []


@pytest.mark.parametrize("name", ["", "has space", 42])
def test_a_bad_task_name_is_refused(name: Any) -> None:
    with pytest.raises(RegistrationError):
        Dispatcher().task(name)(_plain_fn)


def test_a_duplicate_task_name_is_refused() -> None:
    jobs = Dispatcher()
    jobs.task("send")(_plain_fn)
    with pytest.raises(RegistrationError, match="send"):
        jobs.task("send")(_async_fn)
    assert jobs.tasks == ["send"]
