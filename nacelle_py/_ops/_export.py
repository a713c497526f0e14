"""A ``stats()`` value walked into metric families: ``nacelle_<kind>_<field>`` for every number.

What a value can be: a NamedTuple (anything with ``_asdict()``), whose kind
is its type's name without ``Stats`` (``DispatcherStats`` ->
``dispatcher``); or a dict of them (pipeline stages, sub-machines), walked
in order. A stats value's ``name`` field (or else its key in the dict)
becomes the label ``<kind>="<name>"``, nested names joined with ``/``.
A field becomes, by its value and its ``Metric`` annotation: a counter or a
gauge for a number (``True`` is 1), a gauge with one sample per member for
an enum (1 for the current one, like ``nacelle_component_state``), a
histogram for a ``HistogramSnapshot``, the fields of a nested stats value;
anything else (text, ``None``, tuples) is left out.
"""

from __future__ import annotations

import enum
from typing import Any

from .._histogram import HistogramSnapshot
from ._families import Families
from ._names import label_name
from ._shapes import FieldPlan, shape_of

__all__ = ["export"]


def export(families: Families, value: Any, labels: dict[str, str], key: str | None = None) -> None:
    """Add the numbers of ``value`` (a stats NamedTuple or a dict of them) with ``labels`` to ``families``."""
    if isinstance(value, dict):
        for item_key, item in value.items():
            export(families, item, labels, str(item_key))
        return
    as_dict = getattr(value, "_asdict", None)
    if not callable(as_dict) or isinstance(value, HistogramSnapshot):
        return
    data = as_dict()
    cls: type = type(value)
    shape = shape_of(cls, tuple(data))
    own = dict(labels)
    name = data.get("name")
    name = name if isinstance(name, str) else key
    if name is not None:
        parent = labels.get(shape.label)  # a machine's sub-machine: machine="machine/heartbeat"
        own[shape.label] = f"{parent}/{name}" if parent else name
    for plan in shape.fields:
        _field(families, plan, data[plan.key], own)


def _field(families: Families, plan: FieldPlan, item: Any, labels: dict[str, str]) -> None:
    if plan.kind == "omit" or item is None:
        return
    origin = ("stats", plan.base)
    if isinstance(item, HistogramSnapshot):
        families.histogram(origin, plan.base, plan.help, labels, item, plan.scale)
    elif isinstance(item, enum.Enum):
        label = label_name(plan.state_label, labels)
        for member in type(item):
            families.number(
                origin, plan.base, "gauge", plan.help, {**labels, label: member.name.lower()}, member is item
            )
    elif isinstance(item, (int, float)):  # bools too: 1 or 0
        kind = "counter" if plan.kind == "counter" else "gauge"
        families.number(origin, plan.base, kind, plan.help, labels, item * plan.scale)
    elif isinstance(item, dict) or callable(getattr(item, "_asdict", None)):
        export(families, item, labels)  # sub-machines, a stats value inside another
