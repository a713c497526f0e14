"""A retry-forever flow whose task fails without yielding, run under ``fail_after(1)`` (test_qa_contract.py).

    python tests/scripts/qa_flows_spin.py BACKEND ENGINE

Prints ``cancelled`` when the deadline cancels the flow, as it should; a
flow that never yields to the event loop between attempts cannot be
cancelled, and the test's own subprocess timeout ends it.
"""

from __future__ import annotations

import sys

import anyio

from nacelle_py.base import flows


class Boom(flows.Task):
    """Fails at once, without a checkpoint (a validation error, say)."""

    async def execute(self) -> None:
        raise ValueError("invalid")


class Forever(flows.Retry):
    """Retries for ever: only a deadline ends the flow."""

    def on_failure(self, failures: flows.Failures, attempt: int) -> flows.Decision:
        return flows.RETRY


async def main(engine: str) -> None:
    try:
        with anyio.fail_after(1):
            await flows.run(flows.linear("spin", flows.linear("inner", Boom(), retry=Forever())), engine=engine)
    except TimeoutError:
        print("cancelled", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[2], backend=sys.argv[1])
