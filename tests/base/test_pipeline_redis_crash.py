"""The worker-based engine across processes: stages placed on replicas, a replica killed mid-run.

Real processes (``tests/scripts/pipeline_replica.py``), a real ``redis-server``:
the root runs in one replica, the inner stage in three, the leaf in one more,
which stores each message by its id into SQLite. One inner replica is killed
with SIGKILL while it holds messages; the survivors reclaim them after the
lease, the finite pipeline still ends in every replica, and the leaf's table
holds every message exactly once.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _redis import command, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from harness import ROOT, AppProcess, clean_env  # noqa: E402

SCRIPT = ROOT / "tests" / "scripts" / "pipeline_replica.py"
NAMESPACE = "crash"
COUNT = 20_000
BOOT_TIMEOUT = 30.0


def redis(url: str, *args: str | int) -> Any:
    return command(urlsplit(url).port or 6379, *args)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the leaf has not made its tables yet
        return []
    finally:
        conn.close()


def held_by(url: str, pid: int) -> int:
    """Entries of the square edge pending with the consumer of process ``pid`` (its name holds the pid)."""
    summary = redis(url, "XPENDING", f"{NAMESPACE}:edge:square", "square")
    for name, count in summary[3] or []:
        if f":{pid}:" in name.decode():
            return int(count)
    return 0


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., AppProcess]]:
    """``replicas(stages, url, backend)`` starts a replica running ``stages``; all are killed at teardown."""
    started: list[AppProcess] = []

    def start(stages: str, url: str, backend: str, delay: float = 0.004) -> AppProcess:
        env = clean_env(
            PIPELINE_ENGINE="worker-based",
            PIPELINE_STAGES=stages,
            REDIS_URL=url,
            PIPELINE_NAMESPACE=NAMESPACE,
            PIPELINE_LEASE="2",
        )
        env = {k: v for k, v in env.items() if not k.startswith("PR_")}
        app = AppProcess([str(SCRIPT), backend, str(tmp_path / "store.sqlite3"), str(COUNT), str(delay)], env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_replica_killed_mid_run_loses_nothing_and_the_leaf_stores_each_id_once(
    redis_url: str, replicas: Callable[..., AppProcess], tmp_path: Path, backend: str
) -> None:
    db = tmp_path / "store.sqlite3"
    store = replicas("store", redis_url, backend)
    squares = [replicas("square", redis_url, backend) for _ in range(3)]
    for app in (store, *squares):
        app.wait_event("app healthy; supervising", BOOT_TIMEOUT)
    root = replicas("numbers", redis_url, backend)

    deadline = time.monotonic() + 60
    while (rows(db, "SELECT COUNT(*) FROM stored") or [(0,)])[0][0] < 3000:
        assert time.monotonic() < deadline, "no progress\n" + "\n".join(a.dump() for a in (root, store, *squares))
        time.sleep(0.05)
    victim = squares[0]
    # Kill it while it holds messages (its consumer's pending entries, as Redis sees them).
    while held_by(redis_url, victim.proc.pid) == 0:
        assert time.monotonic() < deadline, "the victim never held anything\n" + victim.dump()
        time.sleep(0.005)
    victim.send(signal.SIGKILL)
    assert victim.wait(10) == -signal.SIGKILL

    for app in (root, *squares[1:], store):
        assert app.wait(90) == 0, app.dump()

    stored = dict(rows(db, "SELECT id, value FROM stored"))
    assert len(stored) == COUNT
    assert stored == {f"numbers:{n}.0": n * n for n in range(COUNT)}
    deliveries = rows(db, "SELECT COUNT(*) FROM deliveries")[0][0]
    # Duplicates only from what the killed replica held: at most its edge's buffer (256) of inputs,
    # whose outputs it may have flushed before it could acknowledge them.
    assert COUNT <= deliveries <= COUNT + 2 * 256, deliveries
    reclaimed = [e for app in squares[1:] for e in app.events if "reclaimed" in str(e.get("event", ""))]
    assert reclaimed, "the survivors never reclaimed the killed replica's messages"

    for stage in ("square", "store"):
        assert int(redis(redis_url, "XPENDING", f"{NAMESPACE}:edge:{stage}", stage)[0]) == 0, stage
        assert int(redis(redis_url, "GET", f"{NAMESPACE}:count:{stage}") or 0) == 0, stage
        assert int(redis(redis_url, "XLEN", f"{NAMESPACE}:dead:{stage}")) == 0, stage
        assert int(redis(redis_url, "XLEN", f"{NAMESPACE}:edge:{stage}")) == 0, stage


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_unreachable_redis_fails_the_boot_naming_the_masked_url(backend: str, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = clean_env(
        PIPELINE_ENGINE="worker-based", PIPELINE_STAGES="square", REDIS_URL=f"redis://:s3cret@127.0.0.1:{port}/0"
    )
    app = AppProcess([str(SCRIPT), backend, str(tmp_path / "store.sqlite3"), "10", "0"], env)
    with app:
        began = time.monotonic()
        status = app.wait(10.0 + 5.0)
        took = time.monotonic() - began
    output = app.stdout + app.stderr
    assert status == 1, app.dump()
    assert "s3cret" not in output and f"127.0.0.1:{port}" in output, app.dump()
    failures = [e for e in app.events if e.get("level") in ("error", "critical")]
    text = " ".join(str(v) for e in failures for v in e.values())
    assert "Pipeline" in text and "REDIS_URL" in text and f"127.0.0.1:{port}" in text, text
    assert took < 15
