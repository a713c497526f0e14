"""What a named task looks like on the wire: entries, results and dead letters as JSON.

Never pickle: a replica running other code can read (and refuse) every byte.

- an entry (the stream's ``m`` field, or a member of the schedule):
  ``{"i": id, "t": task, "a": runs so far, "k": keep_result, "e": enqueued at, "p": payload}``
- a result: ``{"t": task, "ok": true, "v": value}`` or
  ``{"t": task, "ok": false, "et": type, "m": message, "tb": traceback}``
- a dead letter: the entry's fields plus ``"et"``, ``"m"``, ``"tb"`` and ``"f"`` (failed at)
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import from_json

from ._jobs import DeadLetter, Failure

__all__ = ["decode_letter", "decode_result", "encode_entry", "encode_failure", "encode_letter", "encode_ok"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_entry(
    task_id: str, task_json: str, attempts: int, keep_result: float, enqueued_at: float, payload_json: str
) -> str:
    """One entry; ``task_json`` and ``payload_json`` are JSON already (the name is encoded once per batch)."""
    return (
        f'{{"i":"{task_id}","t":{task_json},"a":{attempts},"k":{keep_result!r},"e":{enqueued_at!r},"p":{payload_json}}}'
    )


def reencode_entry(entry: dict[str, Any], attempts: int) -> str:
    """The entry again, with another count of runs (a retry, or a dead letter sent back)."""
    return _dumps({**entry, "a": attempts})


def encode_ok(task_json: str, value: Any) -> str:
    """A success (``value`` is JSON data already; ``task_json`` the task's name as JSON)."""
    return f'{{"t":{task_json},"ok":true,"v":{"null" if value is None else _dumps(value)}}}'


def encode_failure(task: str, failure: Failure) -> str:
    """A failure for good."""
    return _dumps({"t": task, "ok": False, "et": failure.error_type, "m": failure.message, "tb": failure.traceback})


def decode_result(raw: bytes | str) -> tuple[str, bool, Any]:
    """``(task, ok, value or Failure)`` from a stored result."""
    data = from_json(raw)
    if data.get("ok"):
        return data["t"], True, data.get("v")
    return data["t"], False, Failure(data.get("et", "Error"), data.get("m", ""), data.get("tb", ""), False)


def encode_letter(entry: dict[str, Any], attempts: int, failure: Failure, failed_at: float) -> str:
    """A dead letter: the entry and why it died."""
    return _dumps(
        {
            **entry,
            "a": attempts,
            "et": failure.error_type,
            "m": failure.message,
            "tb": failure.traceback,
            "f": failed_at,
        }
    )


def decode_letter(raw: bytes | str) -> tuple[DeadLetter, dict[str, Any]]:
    """The ``DeadLetter`` and the entry it came from."""
    data = from_json(raw)
    failure = Failure(data.get("et", "Error"), data.get("m", ""), data.get("tb", ""), False)
    letter = DeadLetter(
        id=str(data.get("i", "")),
        task=str(data.get("t", "")),
        payload=data.get("p"),
        error=failure.error(),
        attempts=int(data.get("a", 0)),
        error_type=failure.error_type,
        traceback=failure.traceback,
        enqueued_at=float(data.get("e", 0.0)),
        failed_at=float(data.get("f", 0.0)),
    )
    entry = {k: data[k] for k in ("i", "t", "a", "k", "e", "p") if k in data}
    return letter, entry
