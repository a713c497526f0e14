"""Channel patterns: dot-separated tokens, ``*`` for one token, a final ``>`` for one or more."""

from __future__ import annotations

__all__ = ["check_channel", "check_pattern", "is_exact", "matches"]


def check_channel(channel: object) -> str:
    """A channel is a non-empty string of non-empty tokens without wildcards."""
    if not isinstance(channel, str) or "" in (tokens := channel.split(".")):
        raise ValueError(f"Machine.publish: a channel is a non-empty dot-separated string, got {channel!r}")
    if "*" in tokens or ">" in tokens:
        raise ValueError(f"Machine.publish: channel {channel!r} has a wildcard; wildcards are for subscribe()")
    return channel


def check_pattern(pattern: object) -> str:
    """A pattern is a channel in which ``*`` may stand for a token and ``>`` for the tail."""
    if not isinstance(pattern, str) or "" in (tokens := pattern.split(".")):
        raise ValueError(f"Machine.subscribe: a pattern is a non-empty dot-separated string, got {pattern!r}")
    if ">" in tokens[:-1]:
        raise ValueError(f"Machine.subscribe: in {pattern!r}, '>' may only be the last token")
    return pattern


def is_exact(pattern: str) -> bool:
    """Whether the pattern has no wildcard (it matches one channel, looked up directly)."""
    tokens = pattern.split(".")
    return "*" not in tokens and tokens[-1] != ">"


def matches(pattern: str, channel: str) -> bool:
    """Whether ``channel`` matches ``pattern``."""
    want, got = pattern.split("."), channel.split(".")
    if want[-1] == ">":
        if len(got) < len(want):
            return False
        want, got = want[:-1], got[: len(want) - 1]
    elif len(want) != len(got):
        return False
    return all(w == "*" or w == g for w, g in zip(want, got))
