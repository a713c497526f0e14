"""LambdaContext: what one invocation knows about itself, from the Runtime API's headers and the environment."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

__all__ = ["FunctionEnvironment", "LambdaContext", "parse_json_header"]


class FunctionEnvironment(NamedTuple):
    """The function's own description, set by the platform in the environment: read once per listener run."""

    function_name: str | None
    function_version: str | None
    memory_limit_in_mb: int | None
    log_group_name: str | None
    log_stream_name: str | None

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> FunctionEnvironment:
        """``AWS_LAMBDA_FUNCTION_NAME``, ``_VERSION``, ``_MEMORY_SIZE``, ``AWS_LAMBDA_LOG_GROUP_NAME``, ``_STREAM_NAME``."""
        env = os.environ if environ is None else environ
        memory = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        return cls(
            env.get("AWS_LAMBDA_FUNCTION_NAME"),
            env.get("AWS_LAMBDA_FUNCTION_VERSION"),
            int(memory) if memory is not None and memory.strip().isdigit() else None,
            env.get("AWS_LAMBDA_LOG_GROUP_NAME"),
            env.get("AWS_LAMBDA_LOG_STREAM_NAME"),
        )


def parse_json_header(value: str | None) -> Any:
    """A header that carries JSON (client context, Cognito identity): the parsed value, or None if absent or malformed."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


class LambdaContext:
    """One invocation's context, handed to ``LambdaListener.handle(event, context)``.

    The names follow AWS's Python runtime, so a handler written for it reads
    the same. From the invocation's headers: ``aws_request_id``,
    ``invoked_function_arn``, ``deadline_ms`` (the deadline as Unix epoch
    milliseconds, ``Lambda-Runtime-Deadline-Ms``) and ``deadline`` (the same
    instant as a timezone-aware UTC ``datetime``), ``trace_id`` (X-Ray's
    header, also in ``os.environ["_X_AMZN_TRACE_ID"]`` while ``handle``
    runs), ``client_context`` and ``identity`` (the parsed JSON of the
    mobile SDK's headers, or None). From the environment:
    ``function_name``, ``function_version``, ``memory_limit_in_mb`` (an
    int), ``log_group_name``, ``log_stream_name`` (None where unset).
    """

    __slots__ = (
        "_environment",
        "aws_request_id",
        "client_context",
        "deadline_ms",
        "identity",
        "invoked_function_arn",
        "trace_id",
    )

    def __init__(
        self,
        *,
        aws_request_id: str,
        deadline_ms: int,
        invoked_function_arn: str | None = None,
        trace_id: str | None = None,
        client_context: Any = None,
        identity: Any = None,
        environment: FunctionEnvironment | None = None,
    ) -> None:
        self.aws_request_id = aws_request_id
        self.deadline_ms = deadline_ms
        self.invoked_function_arn = invoked_function_arn
        self.trace_id = trace_id
        self.client_context = client_context
        self.identity = identity
        self._environment = environment if environment is not None else FunctionEnvironment.read()

    @property
    def deadline(self) -> datetime:
        """When the platform ends the invocation: a timezone-aware UTC ``datetime`` (``deadline_ms`` as epoch ms)."""
        return datetime.fromtimestamp(self.deadline_ms / 1000, tz=UTC)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the deadline (0 once it passed), by the wall clock as the platform counts it."""
        return max(0, self.deadline_ms - int(time.time() * 1000))

    @property
    def function_name(self) -> str | None:
        """The function's name (``AWS_LAMBDA_FUNCTION_NAME``)."""
        return self._environment.function_name

    @property
    def function_version(self) -> str | None:
        """The version being executed (``AWS_LAMBDA_FUNCTION_VERSION``)."""
        return self._environment.function_version

    @property
    def memory_limit_in_mb(self) -> int | None:
        """The memory configured for the function, in MB (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``)."""
        return self._environment.memory_limit_in_mb

    @property
    def log_group_name(self) -> str | None:
        """The CloudWatch log group (``AWS_LAMBDA_LOG_GROUP_NAME``)."""
        return self._environment.log_group_name

    @property
    def log_stream_name(self) -> str | None:
        """The CloudWatch log stream (``AWS_LAMBDA_LOG_STREAM_NAME``)."""
        return self._environment.log_stream_name

    def __repr__(self) -> str:
        return (
            f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r}, "
            f"remaining_ms={self.get_remaining_time_in_millis()})"
        )
