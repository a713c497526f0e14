"""Machine pub/sub: patterns, ordered delivery, overflow policies, lifetimes, unsubscribing mid-publish.

The Go version's pub/sub delivered in the publisher's goroutine (a slow
subscriber blocked everyone) and iterated a map that subscribers mutated. Here a
subscription has its own buffer and overflow policy, and unsubscribing while a
publish is in progress is safe. Handlers that must stay busy wait on events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
import structlog
from _support import Boom, wait_until

from nacelle_py.base import Machine, MachineOverflowError, Routine, Subscription, every

pytestmark = pytest.mark.anyio


def leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


class Stuck:
    """A handler that records each message and holds the first one until released."""

    def __init__(self) -> None:
        self.got: list[Any] = []
        self.holding = anyio.Event()
        self.release = anyio.Event()

    async def __call__(self, msg: Any) -> None:
        self.got.append(msg)
        if not self.holding.is_set():
            self.holding.set()
            await self.release.wait()


@pytest.fixture
def logs() -> Iterator[Any]:
    with structlog.testing.capture_logs() as captured:
        yield captured


# -- patterns ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("orders.created", ["orders.created"], ["orders", "orders.created.x", "orders.deleted", "x.orders.created"]),
        ("orders.*", ["orders.created", "orders.deleted"], ["orders", "orders.a.b", "other.created"]),
        ("*.created", ["orders.created", "users.created"], ["created", "orders.created.x", "a.b.created"]),
        ("orders.>", ["orders.a", "orders.a.b", "orders.a.b.c"], ["orders", "other.a", "ordersx.a"]),
        ("orders.*.>", ["orders.a.b", "orders.a.b.c"], ["orders.a", "orders"]),
    ],
)
async def test_patterns_exact_star_and_gt(pattern: str, matching: list[str], not_matching: list[str]) -> None:
    got: list[str] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            sub = m.subscribe(pattern, got.append)
            assert sub.pattern == pattern
            for channel in not_matching:
                assert await m.publish(channel, channel) == 0, channel
            for channel in matching:
                assert await m.publish(channel, channel) == 1, channel
            await wait_until(lambda: len(got) == len(matching))
            await anyio.sleep(0.01)
    assert got == matching


async def test_publish_returns_the_number_of_subscriptions_it_reached() -> None:
    seen: dict[str, list[str]] = {"exact": [], "star": [], "gt": [], "other": []}
    with anyio.fail_after(10):
        async with Machine() as m:
            assert await m.publish("orders.created", "nobody") == 0
            m.subscribe("orders.created", seen["exact"].append)
            m.subscribe("orders.*", seen["star"].append)
            m.subscribe("orders.>", seen["gt"].append)
            m.subscribe("users.*", seen["other"].append)
            assert await m.publish("orders.created", "a") == 3
            assert await m.publish("orders.created.v2", "b") == 1
            assert await m.publish("users.created", "c") == 1
            assert m.stats().subscriptions == 4
    assert seen == {"exact": ["a"], "star": ["a"], "gt": ["a", "b"], "other": ["c"]}


# -- delivery ---------------------------------------------------------------------------


async def test_handlers_get_messages_in_order_one_at_a_time() -> None:
    trace: list[tuple[str, int]] = []
    inside = 0
    peak = 0

    async def handler(msg: int) -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        trace.append(("in", msg))
        await anyio.sleep(0.001)
        trace.append(("out", msg))
        inside -= 1

    plain: list[int] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            m.subscribe("n", handler)
            m.subscribe("n", plain.append)  # a plain handler works as well
            for i in range(20):
                assert await m.publish("n", i) == 2
    assert peak == 1
    assert trace == [event for i in range(20) for event in (("in", i), ("out", i))]
    assert plain == list(range(20))


async def test_the_default_buffer_is_the_machines() -> None:
    stuck = Stuck()
    with anyio.fail_after(10):
        async with Machine(buffer=2) as m:
            sub = m.subscribe("a", stuck, overflow="error")
            await m.publish("a", 0)
            await stuck.holding.wait()  # 0 is in the handler, the buffer is empty
            assert await m.publish("a", 1) == 1
            assert await m.publish("a", 2) == 1
            assert sub.pending == 2
            with pytest.raises(MachineOverflowError):
                await m.publish("a", 3)
            other = Stuck()
            roomy = m.subscribe("b", other, buffer=5, overflow="error")  # an explicit buffer wins
            await m.publish("b", 0)
            await other.holding.wait()
            for i in range(1, 6):
                await m.publish("b", i)
            assert roomy.pending == 5
            with pytest.raises(MachineOverflowError):
                await m.publish("b", 6)
            other.release.set()
            stuck.release.set()
    assert stuck.got == [0, 1, 2]


async def test_block_overflow_makes_publish_wait_for_room() -> None:
    stuck = Stuck()
    fast: list[int] = []
    trace: list[str] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            sub = m.subscribe("a", stuck, buffer=1)  # overflow="block" is the default
            m.subscribe("a", fast.append, buffer=100)
            await m.publish("a", 0)
            await stuck.holding.wait()
            await m.publish("a", 1)  # fills the buffer of one

            async def publish_2() -> None:
                await m.publish("a", 2)
                trace.append("published 2")

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_2)
                await anyio.sleep(0.02)
                assert trace == [] and sub.pending == 1  # waiting for room
                trace.append("release")
                stuck.release.set()
            assert sub.dropped == 0
    assert trace == ["release", "published 2"]
    assert stuck.got == [0, 1, 2]
    assert fast == [0, 1, 2]


async def test_drop_oldest_drops_the_oldest_buffered_message_and_counts_it() -> None:
    stuck = Stuck()
    with anyio.fail_after(10):
        async with Machine() as m:
            sub = m.subscribe("a", stuck, buffer=2, overflow="drop_oldest")
            await m.publish("a", 0)
            await stuck.holding.wait()
            for i in range(1, 6):
                assert await m.publish("a", i) == 1  # never waits
            assert (sub.dropped, sub.pending) == (3, 2)
            stuck.release.set()
            await wait_until(lambda: sub.pending == 0 and len(stuck.got) == 3)
            assert sub.active
    assert stuck.got == [0, 4, 5]
    assert sub.dropped == 3


async def test_error_overflow_delivers_to_every_other_subscriber_then_raises_naming_it() -> None:
    stuck = Stuck()
    others: dict[str, list[int]] = {"before": [], "after": []}
    with anyio.fail_after(10):
        async with Machine() as m:
            m.subscribe("audit.*", others["before"].append)
            full = m.subscribe("audit.>", stuck, buffer=1, overflow="error")
            m.subscribe("audit.x", others["after"].append)
            assert await m.publish("audit.x", 0) == 3
            await stuck.holding.wait()
            assert await m.publish("audit.x", 1) == 3
            with pytest.raises(MachineOverflowError) as info:
                await m.publish("audit.x", 2)
            assert "audit.>" in str(info.value)
            await wait_until(lambda: others["before"] == [0, 1, 2] and others["after"] == [0, 1, 2])
            assert full.active and full.pending == 1
            stuck.release.set()
            await wait_until(lambda: full.pending == 0 and len(stuck.got) == 2)
            assert await m.publish("audit.x", 3) == 3  # it takes messages again once it has room
    assert stuck.got == [0, 1, 3]  # 2 never reached it


@pytest.mark.parametrize("overflow", ["drop_oldest", "error"])
async def test_a_stuck_subscriber_does_not_hold_up_the_others_unless_it_blocks(overflow: Any) -> None:
    stuck = Stuck()
    fast: list[int] = []
    overflows = 0
    with anyio.fail_after(10):
        async with Machine() as m:
            slow = m.subscribe("a", stuck, buffer=1, overflow=overflow)
            m.subscribe("a", fast.append, buffer=1000)
            await m.publish("a", 0)
            await stuck.holding.wait()
            for i in range(1, 50):
                try:
                    await m.publish("a", i)
                except MachineOverflowError:
                    overflows += 1
            await wait_until(lambda: len(fast) == 50)
            assert not stuck.release.is_set()  # all of it went through while the slow one is stuck
            assert stuck.got == [0]
            stuck.release.set()
    assert fast == list(range(50))
    if overflow == "drop_oldest":
        assert (slow.dropped, overflows) == (48, 0)
        assert stuck.got == [0, 49]
    else:
        assert overflows == 48
        assert stuck.got == [0, 1]


async def test_a_handler_returning_false_ends_its_subscription() -> None:
    got: list[int] = []
    falsy: list[int] = []

    def until_3(msg: int) -> bool:
        got.append(msg)
        return msg != 3

    async def returns_falsy_but_not_false(msg: int) -> Any:
        falsy.append(msg)
        return 0 if msg % 2 else None

    with anyio.fail_after(10):
        async with Machine() as m:
            sub = m.subscribe("n", until_3)
            keeps = m.subscribe("n", returns_falsy_but_not_false)
            for i in range(1, 4):
                assert await m.publish("n", i) == 2
            await wait_until(lambda: not sub.active)
            assert await m.publish("n", 4) == 1
            await wait_until(lambda: len(falsy) == 4)
            assert keeps.active
            assert m.stats().subscriptions == 1
    assert got == [1, 2, 3]
    assert falsy == [1, 2, 3, 4]


async def test_a_handler_error_ends_its_subscription_is_logged_and_collected(logs: list[dict[str, Any]]) -> None:
    boom = Boom("handler")
    got: list[int] = []
    other: list[int] = []

    def bad(msg: int) -> None:
        got.append(msg)
        if msg == 2:
            raise boom

    with anyio.fail_after(10), pytest.raises(ExceptionGroup) as info:
        async with Machine() as m:
            sub = m.subscribe("n", bad)
            m.subscribe("n", other.append)
            for i in range(1, 3):
                await m.publish("n", i)
            await wait_until(lambda: not sub.active)
            assert await m.publish("n", 3) == 1
            await wait_until(lambda: other == [1, 2, 3])
    assert leaves(info.value) == [boom]
    assert got == [1, 2]
    assert any(
        e.get("log_level") == "error" and (e.get("exc_info") in (boom, True) or "handler" in str(e)) for e in logs
    ), logs


async def test_wait_raises_a_handler_error_of_a_sub_machine() -> None:
    boom = Boom("child handler")

    def bad(msg: int) -> None:
        raise boom

    with anyio.fail_after(10):
        try:
            async with Machine() as m:
                child = m.sub("child")
                sub = child.subscribe("n", bad)
                await m.publish("n", 1)
                await wait_until(lambda: not sub.active)
                with pytest.raises(ExceptionGroup) as info:
                    await child.wait()
                assert leaves(info.value) == [boom]
        except ExceptionGroup as again:  # leaving may report it once more
            assert leaves(again) == [boom]


# -- lifetimes ----------------------------------------------------------------------------


async def test_a_routines_subscription_ends_with_the_routine() -> None:
    got: list[int] = []
    end = anyio.Event()
    subs: list[Subscription] = []

    async def listener(r: Routine) -> None:
        subs.append(r.subscribe("n", got.append))
        await (end.wait() if len(subs) == 1 else anyio.sleep_forever())

    with anyio.fail_after(10):
        async with Machine() as m:
            r = await m.go(listener)
            await wait_until(lambda: len(subs) == 1)
            assert m.stats().subscriptions == 1
            assert await m.publish("n", 1) == 1
            await wait_until(lambda: got == [1])
            end.set()
            await r.wait()
            await wait_until(lambda: not subs[0].active)
            assert await m.publish("n", 2) == 0
            assert m.stats().subscriptions == 0
            # and a routine that is cancelled or times out takes its subscription with it
            t = await m.go(listener, timeout=0.05)
            await t.wait()
            assert t.state == "timed_out"
            await wait_until(lambda: not subs[1].active)
            c = await m.go(listener)
            await wait_until(lambda: len(subs) == 3)
            c.cancel()
            await c.wait()
            await wait_until(lambda: not subs[2].active)
            assert await m.publish("n", 3) == 0
    assert got == [1]


async def test_a_machine_subscription_gets_everything_published_before_the_machine_closes() -> None:
    got: list[int] = []

    async def slow(msg: int) -> None:
        await anyio.sleep(0.002)
        got.append(msg)

    async def publisher(r: Routine) -> None:
        for i in range(10, 15):
            await anyio.sleep(0.003)
            await r.publish("n", i)

    with anyio.fail_after(10):
        async with Machine() as m:
            sub = m.subscribe("n", slow)
            for i in range(10):
                await m.publish("n", i)
            await m.go(publisher)  # still publishing when the block ends
    assert got == list(range(15))
    assert not sub.active


async def test_machine_cancel_ends_machine_owned_subscriptions() -> None:
    async with Machine() as m:
        child = m.sub("child")
        own = m.subscribe("n", lambda msg: None)
        childs = child.subscribe("n", lambda msg: None)
        assert await m.publish("n", 0) == 2
        m.cancel()
        await wait_until(lambda: not own.active and not childs.active)
    assert not own.active


async def test_sub_cancel_unsubscribes() -> None:
    got: list[int] = []
    async with Machine() as m:
        sub = m.subscribe("n", got.append)
        await m.publish("n", 1)
        await wait_until(lambda: got == [1])
        sub.cancel()
        sub.cancel()  # twice is harmless
        assert not sub.active
        assert await m.publish("n", 2) == 0
        assert m.stats().subscriptions == 0
    assert got == [1]


# -- unsubscribing while publishing ------------------------------------------------------


async def test_cancelling_the_subscription_a_publish_waits_on_lets_the_publish_finish() -> None:
    stuck = Stuck()
    fast: list[int] = []
    results: list[int] = []
    with anyio.fail_after(10):
        async with Machine() as m:
            full = m.subscribe("a", stuck, buffer=1)  # block
            m.subscribe("a", fast.append)
            await m.publish("a", 0)
            await stuck.holding.wait()
            await m.publish("a", 1)

            async def publish_2() -> None:
                results.append(await m.publish("a", 2))

            async with anyio.create_task_group() as tg:
                tg.start_soon(publish_2)
                await anyio.sleep(0.02)
                assert results == []  # waiting for the full subscriber
                full.cancel()
            assert results == [1]
            assert not full.active
            stuck.release.set()
    assert fast == [0, 1, 2]
    assert 2 not in stuck.got


async def test_handlers_that_unsubscribe_others_and_themselves_during_a_publish_are_safe() -> None:
    n = 20
    got: dict[int, list[int]] = {i: [] for i in range(n)}
    subs: list[Subscription] = []

    def handler(i: int) -> Callable[[int], None]:
        def fn(msg: int) -> None:
            got[i].append(msg)
            if msg == i:
                subs[i].cancel()
                if i + 1 < n:
                    subs[i + 1].cancel()

        return fn

    with anyio.fail_after(10):
        async with Machine() as m:
            subs.extend(m.subscribe("x", handler(i), buffer=1) for i in range(n))
            for msg in range(n + 5):
                await m.publish("x", msg)
            await wait_until(lambda: not any(s.active for s in subs))
            assert await m.publish("x", 99) == 0
    for i in range(n):
        assert got[i] == sorted(got[i]) and len(set(got[i])) == len(got[i]), got[i]  # in order, never twice


async def test_subscribe_and_unsubscribe_churn_while_publishers_run() -> None:
    received: dict[int, list[int]] = {}
    stop = anyio.Event()
    counts: list[int] = []

    def handler(key: int) -> Callable[[int], Any]:
        async def fn(msg: int) -> None:
            received[key].append(msg)
            await anyio.sleep(0)

        return fn

    async def churn(m: Machine) -> None:
        live: list[Subscription] = []
        key = 0
        while not stop.is_set():
            received[key] = []
            live.append(m.subscribe("t.>", handler(key), buffer=1, overflow="block" if key % 2 else "drop_oldest"))
            key += 1
            if len(live) > 5:
                live.pop(0).cancel()
            await anyio.sleep(0.001)
        for s in live:
            s.cancel()

    async def publisher(channel: str, start: int) -> None:
        for i in range(start, start + 200):
            counts.append(await m.publish(channel, i))

    with anyio.fail_after(20):
        async with Machine() as m:
            async with anyio.create_task_group() as tg:
                tg.start_soon(churn, m)
                async with anyio.create_task_group() as pubs:
                    pubs.start_soon(publisher, "t.a", 0)
                    pubs.start_soon(publisher, "t.b.c", 1000)
                stop.set()
    assert len(counts) == 400 and all(0 <= c <= 6 for c in counts)
    for msgs in received.values():
        for lo in (0, 1000):
            mine = [x for x in msgs if lo <= x < lo + 200]
            assert mine == sorted(set(mine)), mine  # each publisher's messages in order, never twice


# -- a machine tree shares one bus ------------------------------------------------------


async def test_a_machine_tree_shares_its_subscribers() -> None:
    got: dict[str, list[str]] = {"root": [], "grandchild": [], "sibling": []}
    with anyio.fail_after(10):
        async with Machine() as root:
            child = root.sub("a")
            grandchild = child.sub("b")
            sibling = root.sub("c")
            root.subscribe("t", got["root"].append)
            grandchild.subscribe("t", got["grandchild"].append)
            sibling.subscribe("t", got["sibling"].append)
            assert await root.publish("t", "from root") == 3
            assert await grandchild.publish("t", "from grandchild") == 3
            assert await sibling.publish("t", "from sibling") == 3
            assert (root.stats().subscriptions, grandchild.stats().subscriptions) == (1, 1)
    order = ["from root", "from grandchild", "from sibling"]
    assert got == {"root": order, "grandchild": order, "sibling": order}


async def test_routines_publish_and_subscribe_on_their_machines_bus() -> None:
    got: list[str] = []
    ready = anyio.Event()
    done = anyio.Event()

    async def listener(r: Routine) -> None:
        def on(msg: str) -> bool:
            got.append(msg)
            if msg == "last":
                done.set()
                return False
            return True

        r.subscribe("chat.*", on)
        ready.set()
        await done.wait()

    async def talker(r: Routine) -> None:
        await ready.wait()
        for msg in ("hi", "there", "last"):
            assert await r.publish("chat.room", msg) == 1

    with anyio.fail_after(10):
        async with Machine() as m:
            child = m.sub("child")
            await child.go(listener)
            await m.go(talker)
    assert got == ["hi", "there", "last"]


async def test_the_seed_scenario_a_timed_publisher_and_a_timed_subscriber() -> None:
    """autom8ter/machine's README: publish every interval for a while; a subscriber listens for less."""
    received: list[str] = []
    results: list[tuple[bool, int]] = []
    subs: list[Subscription] = []
    routines: dict[str, Routine] = {}

    async def subscriber(r: Routine) -> None:
        subs.append(r.subscribe("acme.com", received.append))
        await anyio.sleep_forever()

    async def publish(r: Routine) -> None:
        listener = routines["subscriber"]
        was_done = listener.done
        results.append((was_done, await r.publish("acme.com", "hey there bud!")))

    with anyio.fail_after(10):
        async with Machine(max_routines=10) as m:
            routines["subscriber"] = await m.go(subscriber, id="subscriber", tags=("subscribe",), timeout=0.15)
            await wait_until(lambda: len(subs) == 1)
            publisher = await m.go(publish, id="publisher", tags=("publish",), timeout=0.3, middlewares=[every(0.01)])
            info = {i.id: i for i in m.stats().routines}
            assert info["publisher"].tags == ("publish",) and info["subscriber"].tags == ("subscribe",)
    assert publisher.state == "timed_out" and routines["subscriber"].state == "timed_out"
    assert received and set(received) == {"hey there bud!"}
    assert not subs[0].active
    assert all(n == 0 for was_done, n in results if was_done), results  # the subscription ended with its routine
    assert any(n == 1 for _, n in results)
    assert len(received) <= sum(n for _, n in results)


async def test_publish_nowait_delivers_and_names_what_a_full_buffer_refused() -> None:
    """Nothing waits: a full ``block`` buffer is WouldBlock, a full ``error`` one an overflow; the others get it."""
    fast: list[int] = []
    gate = anyio.Event()
    blocked: list[int] = []

    async def held(msg: int) -> None:
        await gate.wait()
        blocked.append(msg)

    with anyio.fail_after(5):
        async with Machine() as m:
            m.subscribe("n", fast.append)
            m.subscribe("n", held, buffer=1)  # overflow="block"
            assert m.publish_nowait("n", 1) == 2
            await wait_until(lambda: fast == [1])  # `held` has taken 1 and waits on the gate
            assert m.publish_nowait("n", 2) == 2  # its buffer holds one
            with pytest.raises(anyio.WouldBlock):
                m.publish_nowait("n", 3)
            await wait_until(lambda: fast == [1, 2, 3])  # the other subscriber had it
            refusing = m.subscribe("e", fast.append, buffer=1, overflow="error")
            assert m.publish_nowait("e", 10) == 1  # not yet taken by its task
            with pytest.raises(MachineOverflowError) as info:
                m.publish_nowait("e", 11)
            assert info.value.subscriptions == [refusing]
            gate.set()
    assert blocked == [1, 2]
    assert fast == [1, 2, 3, 10]
