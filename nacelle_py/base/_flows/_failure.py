"""What went wrong in a flow: one ``Failure`` per error, ``Failures`` by task, ``FlowFailed`` at the end."""

from __future__ import annotations

import builtins
import traceback as tb
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._states import State

__all__ = ["Failure", "Failures", "FlowFailed", "FlowSuspended"]


@dataclass(frozen=True)
class Failure:
    """One error of one atom: which task, in which operation, of which type, with which message.

    ``exception`` is the exception itself when it was raised in this process;
    a failure read back from the SQLite store or returned by a worker of the
    worker-based engine has only its type name, message and traceback text.
    """

    task: str
    operation: str  # "execute" or "revert"
    type: str
    message: str
    traceback: str = ""
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, task: str, operation: str, error: BaseException) -> Failure:
        """The failure that ``error``, raised by ``task``'s ``operation``, stands for.

        An error that carries a ``failure`` of its own (one raised in a worker)
        is that failure: its remote type, message and traceback.
        """
        remote = getattr(error, "failure", None)
        if isinstance(remote, Failure):  # its exception is in the worker: the type name is what there is
            return cls(task, operation, remote.type, remote.message, remote.traceback)
        text = "".join(tb.format_exception(type(error), error, error.__traceback__))
        return cls(task, operation, type(error).__name__, str(error), text, error)

    def check(self, *types: builtins.type[BaseException]) -> bool:
        """Whether the error is one of ``types`` (by class when it is here, else by type name)."""
        if self.exception is not None:
            return isinstance(self.exception, types)
        return any(t.__name__ == self.type for t in types)

    def to_json(self) -> dict[str, str]:
        """The failure as JSON data (what the SQLite store and the workers carry)."""
        return {
            "task": self.task,
            "operation": self.operation,
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Failure:
        """The failure ``to_json()`` wrote."""
        return cls(
            str(data["task"]),
            str(data["operation"]),
            str(data["type"]),
            str(data["message"]),
            str(data.get("traceback", "")),
        )

    def __str__(self) -> str:
        return f"{self.task}.{self.operation}: {self.type}: {self.message}"


class Failures(Mapping[str, Failure]):
    """The execute failures of a flow so far, by task name (what ``revert()`` and retry controllers get)."""

    def __init__(self, failures: Mapping[str, Failure] | None = None) -> None:
        self._failures: dict[str, Failure] = dict(failures or {})

    def __getitem__(self, task: str) -> Failure:
        return self._failures[task]

    def __iter__(self) -> Iterator[str]:
        return iter(self._failures)

    def __len__(self) -> int:
        return len(self._failures)

    def __repr__(self) -> str:
        return f"Failures({list(self._failures.values())!r})"


class FlowFailed(Exception):
    """A flow did not succeed: ``state`` is REVERTED (everything that ran was undone) or FAILED.

    FAILED means a revert raised too, so some effects may remain: ``failures``
    holds the execute errors and the revert errors, in the order they
    happened. ``values`` is what the flow's store held when it ended.
    """

    def __init__(
        self,
        flow: str,
        state: State,
        failures: tuple[Failure, ...],
        *,
        flow_id: str = "",
        values: Mapping[str, Any] | None = None,
    ) -> None:
        self.flow = flow
        self.state = state
        self.failures = failures
        self.flow_id = flow_id
        self.values: Mapping[str, Any] = dict(values or {})
        super().__init__(flow, state, failures)

    def __str__(self) -> str:
        ended = "reverted" if self.state is State.REVERTED else "failed (a revert raised; effects may remain)"
        counts: dict[str, int] = {}  # each failure once, in order: retries repeat the same one
        for failure in self.failures:
            text = str(failure)
            counts[text] = counts.get(text, 0) + 1
        listed = "; ".join(text if n == 1 else f"{text} ({n} times)" for text, n in counts.items())
        return f"flow {self.flow!r} {ended}: {listed or 'no failure recorded'}"


class FlowSuspended(Exception):
    """``suspend()`` stopped the flow between atoms; ``run()`` again (or ``flows.resume``) carries on."""

    def __init__(self, flow: str, flow_id: str) -> None:
        self.flow = flow
        self.flow_id = flow_id
        self.state = State.SUSPENDED
        super().__init__(flow, flow_id)

    def __str__(self) -> str:
        return f"flow {self.flow!r} ({self.flow_id}) is suspended; run it again to resume"
