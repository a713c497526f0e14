"""The App's machine service: a component released and then started again gets a new sub-machine, as at boot."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import structlog
from _support import Boom, wait_until

from nacelle_py._machines import MachineService
from nacelle_py.base import Machine, MachineError, MachineSettings, MachineStats, Routine

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def opened(**settings: Any) -> AsyncIterator[MachineService]:
    """A machine service opened as ``serve()`` opens it, closed as it closes it."""
    logger = structlog.get_logger()
    service = MachineService(logger)
    await service.open(MachineSettings(**settings), logger)
    try:
        yield service
    finally:
        await service.close()


def fresh(name: str, max_routines: int | None = None) -> MachineStats:
    return MachineStats(
        name=name,
        active=0,
        total=0,
        waiting=0,
        max_routines=max_routines,
        errors=0,
        recovered=0,
        routines=(),
        subs={},
        subscriptions=0,
    )


async def forever() -> None:
    await anyio.sleep_forever()


async def fails() -> None:
    raise Boom("on purpose")


async def test_a_released_component_gets_a_new_working_sub_machine_of_the_same_name_each_time() -> None:
    async with opened(max_routines=1) as service:  # one slot for the whole app: the old routines must free it
        root = service.root()
        previous: Machine | None = None
        for _ in range(3):  # boot, then two restarts
            machine = service.for_component("worker")
            assert machine is not previous and service.for_component("worker") is machine  # one per run
            assert machine.name == "worker" and machine.parent is root and not machine.cancelled
            assert machine.stats() == fresh("worker") and root.stats().subs == {"worker": fresh("worker")}

            got: list[Any] = []
            machine.subscribe("news", got.append)
            assert await machine.publish("news", "hello") == 1  # the old machine's subscription is gone
            await wait_until(lambda: got == ["hello"])
            failing = await machine.go(fails, id="ticker")  # the same id each run: a new machine, no clash
            with pytest.raises(Boom):
                await failing.wait()
            ticker = await machine.go(forever, id="ticker", tags=("tick",))
            extra: Routine | None = machine.try_go(forever)
            assert extra is None  # the ticker holds the app's one slot
            assert machine.stats().errors == 1 and machine.stats().active == 1

            ending = service.release("worker")
            assert ending is not None and "worker" not in root.children  # out of the tree at once
            await ending
            assert ticker.state == "cancelled" and machine.cancelled and root.stats().subs == {}
            with pytest.raises(MachineError):
                await machine.go(forever)
            assert service.release("worker") is None  # released once
            previous = machine
        assert root.stats().errors == 0  # each sub-machine's errors were its own


async def test_a_component_started_again_before_its_old_routines_ended_gets_its_own_machine() -> None:
    cleaned = anyio.Event()

    async def slow_cleanup() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.02)
                cleaned.set()

    async with opened() as service:
        old = service.for_component("worker")
        old_routine = await old.go(slow_cleanup, id="ticker")
        ending = service.release("worker")
        assert ending is not None

        new = service.for_component("worker")  # while the old routine still runs
        assert new is not old and new.stats() == fresh("worker")
        new_routine = await new.go(forever, id="ticker")
        await ending  # ends the old machine only
        assert cleaned.is_set() and old_routine.state == "cancelled"
        assert new_routine.state == "running" and not new.cancelled and new.stats().active == 1
        assert [i.id for i in service.root().stats().subs["worker"].routines] == ["ticker"]
        assert service.root().children == {"worker": new}
    assert new_routine.state == "cancelled"  # closing the service ends the new one too
