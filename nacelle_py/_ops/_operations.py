"""The App's operational surface for one ``serve()``: the ops endpoint and systemd notifications.

Both are the App's own, not components: the ops endpoint must answer
``/readyz`` with 503 before the first component starts and after the last
one stopped, which no component could do from inside the lifecycle.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from .._extras import require
from .._health import Health, HealthComponent
from .._lifecycle import Runner
from .._serving import ASGIServing, format_address, listen
from ._settings import OpsSettings, SystemdSettings, parse_addr
from ._status import Status
from ._systemd import Notifier, watchdog_applies

__all__ = ["Operations"]

OPS_DRAIN = 1.0
"""Seconds a scrape or probe in flight gets once the app has stopped."""


class Operations:
    """Binds the ops endpoint before boot (``prepare``), serves and notifies around the lifecycle (``running``)."""

    def __init__(self, ops: OpsSettings, systemd: SystemdSettings, logger: Any) -> None:
        self.ops = ops
        self.systemd = systemd
        self._log = logger.bind(component="ops")
        self._sock: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._notifier: Notifier | None = None

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the ops endpoint listens, once bound."""
        return self._address

    def prepare(self) -> None:
        """Check the extras and bind the ops socket; raises (naming OPS_ADDR or the extra) if it cannot."""
        if self.ops.addr is not None:
            require("hypercorn", "http", "the ops endpoint (OPS_ADDR)")
            if self.ops.metrics:
                feature = "/metrics on the ops endpoint (set OPS_METRICS=false to go without)"
                require("prometheus_client", "metrics", feature)
            self._sock = listen(*parse_addr(self.ops.addr), settings="OPS_ADDR")
            self._address = self._sock.getsockname()[:2]
            address = format_address(*self._address)
            self._log.info("ops endpoint listening", address=address, url=f"http://{address}")
        if self.systemd.notify_socket:
            self._notifier = Notifier(self.systemd.notify_socket, self._log)

    def close(self) -> None:
        """Release what ``prepare`` took, when serving does not follow."""
        if self._sock is not None:
            self._sock.close()
        if self._notifier is not None:
            self._notifier.close()

    @asynccontextmanager
    async def running(
        self,
        runner: Runner,
        health: Health,
        machine_stats: Callable[[], Iterable[tuple[str, Any]]],
        loop_blocked: Callable[[], int] = lambda: 0,
    ) -> AsyncIterator[None]:
        """Serve the ops endpoint and send systemd notifications for the length of the block."""
        serving = self._endpoint(Status(runner, health, machine_stats, loop_blocked))
        notifier = self._notifier
        unsubscribe: Callable[[], None] | None = None
        if notifier is not None:
            runner.observe(self._systemd_observer(notifier, runner, health))
            unsubscribe = health.subscribe(self._health_listener(notifier, runner, health))
        watchdog = anyio.CancelScope()
        applies = watchdog_applies(self.systemd.watchdog_usec, self.systemd.watchdog_pid)
        period = self.systemd.watchdog_usec if notifier is not None and applies else None
        try:
            async with anyio.create_task_group() as tg:
                if serving is not None:
                    tg.start_soon(self._serve, serving)
                if notifier is not None and period is not None:
                    tg.start_soon(self._watchdog, watchdog, notifier, period)
                try:
                    yield
                finally:
                    watchdog.cancel()
                    if serving is not None:
                        serving.shutdown()  # it drains within OPS_DRAIN
        finally:
            if unsubscribe is not None:
                unsubscribe()
            if notifier is not None:
                notifier.close()

    def _endpoint(self, status: Status) -> ASGIServing | None:
        """The ops app over ``status``, on the socket ``prepare`` bound (None when OPS_ADDR is unset)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return None
        from ._routes import OpsApp

        render = None
        if self.ops.metrics:
            from ._metrics import Metrics

            render = Metrics(status).render
        return ASGIServing(OpsApp(status, render), sock, graceful_timeout=OPS_DRAIN, logger=self._log)

    @staticmethod
    async def _watchdog(scope: anyio.CancelScope, notifier: Notifier, period_usec: int) -> None:
        with scope:
            await notifier.watchdog(period_usec)

    async def _serve(self, serving: ASGIServing) -> None:
        try:
            await serving.serve()
        except Exception as exc:  # probes failing is the orchestrator's signal; the app goes on
            self._log.error("ops endpoint failed", exc_info=exc)

    # -- systemd ------------------------------------------------------------------

    def _systemd_observer(self, notifier: Notifier, runner: Runner, health: Health) -> Callable[[str, str], None]:
        def observe(event: str, detail: str) -> None:
            if event == "starting":
                notifier.status(detail)  # "starting priority N (k components)"
            elif event == "running":
                notifier.notify(READY="1", STATUS=_summary(runner, health))
            elif event == "stopping":
                notifier.notify(STOPPING="1", STATUS=f"stopping: {detail}")
            elif event == "stopped":
                notifier.status("stopped")

        return observe

    def _health_listener(self, notifier: Notifier, runner: Runner, health: Health) -> Callable[[HealthComponent], None]:
        last: list[str] = [""]

        def changed(_component: HealthComponent) -> None:
            if runner.phase != "running":
                return  # boot and unwind say so themselves
            text = _summary(runner, health)
            if text != last[0]:
                last[0] = text
                notifier.status(text)

        return changed


def _summary(runner: Runner, health: Health) -> str:
    unhealthy = [s.key for s in health.unhealthy()]
    if unhealthy:
        return f"degraded: unhealthy {', '.join(unhealthy)}"
    return f"ready: {_count(len(runner.entries), 'component')} healthy"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
