"""The naming rules of ``/metrics``: any stats type or field name becomes a valid, unreserved one.

Prometheus accepts ``[a-zA-Z_:][a-zA-Z0-9_:]*`` for metric names and
``[a-zA-Z_][a-zA-Z0-9_]*`` for label names, keeps ``__`` label names for
itself, and gives the suffixes ``_total``, ``_count``, ``_sum``, ``_bucket``
(and in OpenMetrics ``_created``, ``_info``, ``_gcount``, ``_gsum``) and the
labels ``le`` and ``quantile`` a meaning of their own; ``promtool check
metrics`` also wants snake_case and no ``:`` (kept for recording rules).
The rules, applied in this order (docs/operations.md has the table):

1. Accents are dropped (``ü`` -> ``u``); a field's camelCase is split
   (``queueDepth`` -> ``queue_depth``); a stats type's name is only
   lowercased (``OrderQueueStats`` -> ``orderqueue``, as it always was).
2. Lowercase; every run of other characters (``-``, ``.``, ``:``, spaces,
   letters with no ASCII form) becomes one ``_``; ``_`` at either end goes.
   A field left empty is ``field_<position>``, a type left empty ``stats``.
3. A counter drops its trailing ``_total`` (it gets one back); a unit is
   appended unless the name ends with it.
4. A gauge's or histogram's name that ends with a reserved suffix gets
   ``_value`` (a gauge ``total`` is ``nacelle_<kind>_total_value``); a
   counter's needs nothing, its samples end in ``_total`` (a counter
   ``count`` is ``nacelle_<kind>_count_total``).
5. A label name that is reserved (``le``, ``quantile``, ``component``) or
   already used on the sample gets ``_label``; one starting with a digit
   gets a ``_`` in front.
6. Two fields that end up with one name: the first keeps it, the next get
   ``_2``, ``_3``, ... (in field order, so it is the same on every scrape).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection

__all__ = [
    "PREFIX",
    "RESERVED_LABELS",
    "RESERVED_SUFFIXES",
    "field_name",
    "kind_name",
    "label_name",
    "metric_base",
    "unique",
]

PREFIX = "nacelle"
RESERVED_SUFFIXES = ("_total", "_created", "_count", "_sum", "_bucket", "_gcount", "_gsum", "_info")
RESERVED_LABELS = frozenset({"le", "quantile", "component"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_OTHER = re.compile(r"[^a-z0-9]+")


def _ascii(text: str) -> str:
    """``text`` with accents dropped (NFKD, combining marks removed); other non-ASCII stays, for ``_clean``."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _clean(text: str) -> str:
    return _OTHER.sub("_", text.lower()).strip("_")


def kind_name(type_name: str) -> str:
    """``DispatcherStats`` -> ``dispatcher``: the type's name without ``Stats``, lowercased and cleaned."""
    return _clean(_ascii(type_name.removesuffix("Stats"))) or "stats"


def field_name(name: str, position: int) -> str:
    """``queueDepth`` -> ``queue_depth``, ``p-99`` -> ``p_99``; ``field_<position>`` when nothing is left."""
    return _clean(_CAMEL.sub("_", _ascii(name))) or f"field_{position}"


def metric_base(kind: str, field: str, *, counter: bool, unit: str | None) -> str:
    """The family name of field ``field`` of stats kind ``kind`` (a counter's without its ``_total``)."""
    while counter and (field == "total" or field.endswith("_total")):
        field = field.removesuffix("total").removesuffix("_")
    if unit:
        unit = _clean(_ascii(unit))
        if field != unit and not field.endswith(f"_{unit}"):
            field = f"{field}_{unit}" if field else unit
    name = f"{PREFIX}_{kind}_{field}" if field else f"{PREFIX}_{kind}"
    return f"{name}_value" if not counter and name.endswith(RESERVED_SUFFIXES) else name


def label_name(name: str, taken: Collection[str] = ()) -> str:
    """A label name from an already cleaned ``name``: ``le`` -> ``le_label``, ``1st`` -> ``_1st``."""
    if name[:1].isdigit():
        name = f"_{name}"
    while name in RESERVED_LABELS or name in taken:
        name = f"{name}_label"
    return name


def unique(name: str, taken: Collection[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... whichever is not in ``taken`` first."""
    if name not in taken:
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"
