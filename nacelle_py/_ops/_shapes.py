"""The export plan of one stats type: its kind, its name label, and each field's family.

Worked out once per type and set of fields (``functools.lru_cache``; a
type's annotations do not change) from the field names and the ``Metric``
in each field's ``Annotated[...]``. Types only: no app's state is cached.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass

from .._metric import Metric, MetricKind
from ._names import field_name, kind_name, label_name, metric_base, unique

__all__ = ["FieldPlan", "Shape", "shape_of"]


@dataclass(frozen=True)
class FieldPlan:
    """How one field is exported: its key in ``_asdict()``, family name, type, HELP, scale, state label."""

    key: str
    base: str  # the family's name; a counter's samples add ``_total``, a histogram's ``_bucket`` ...
    kind: MetricKind
    help: str
    scale: float
    state_label: str  # the label that names an enum field's states


@dataclass(frozen=True)
class Shape:
    """A stats type's kind (``dispatcher``), the label its ``name`` goes in, and its fields' plans."""

    kind: str
    label: str
    fields: tuple[FieldPlan, ...]


@functools.lru_cache(maxsize=256)
def shape_of(cls: type, keys: tuple[str, ...]) -> Shape:
    """The plan for a value of type ``cls`` whose ``_asdict()`` has ``keys``."""
    kind = kind_name(cls.__name__)
    notes = _annotations(cls)
    taken: set[str] = set()
    fields = []
    for position, key in enumerate(keys):
        note = notes.get(key) or Metric("gauge", f"Field {key!r} of {cls.__name__}, from the component's stats().")
        name = field_name(note.name or key, position)
        base = ""
        if note.kind != "omit":  # an omitted field takes no name from the others
            base = unique(metric_base(kind, name, counter=note.kind == "counter", unit=note.unit), taken)
            taken.add(base)
        fields.append(
            FieldPlan(key, base, note.kind, note.help or f"{key} of {cls.__name__}.", note.scale, label_name(name))
        )
    return Shape(kind, label_name(kind), tuple(fields))


def _annotations(cls: type) -> dict[str, Metric]:
    """The ``Metric`` of each annotated field; none when the annotations cannot be resolved at run time."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # a name only imported under TYPE_CHECKING, say: export the fields as gauges
        return {}
    found: dict[str, Metric] = {}
    for key, hint in hints.items():
        for extra in getattr(hint, "__metadata__", ()):
            if isinstance(extra, Metric):
                found[key] = extra
    return found
