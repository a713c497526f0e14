"""``--help``: a table of every setting an app reads, from its settings models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from ._config import MASK, Config, is_secret

__all__ = ["default_text", "describe", "type_name"]


def type_name(annotation: Any) -> str:
    """A field's type as a reader would write it."""
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: Any) -> str:
    """``required``, or the default as shown to a reader (a secret's masked)."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "default: (computed)"
    if field.default is PydanticUndefined:
        return "required"
    if is_secret(field):
        return f"default: {MASK}"
    default = field.default
    shown = repr(default) if isinstance(default, str) or default is None else str(default)
    return f"default: {shown}"


def describe(app_name: str, config: Config, models: Mapping[type[BaseSettings], Iterable[str]]) -> str:
    """The ``--help`` text: per settings model, each env variable with type, default and description.

    ``models`` maps each model to the names of the components that read it.
    """
    lines = [f"{app_name}: settings are read from the environment"]
    if config.prefix and config.fallback:
        lines.append(f"(each variable under the prefix {config.prefix}; the unprefixed name is read as a fallback)")
    elif config.prefix:
        lines.append(f"(each variable under the prefix {config.prefix} only: no unprefixed fallback)")
    if config.env_file is not None:
        lines.append(f"(and from the env file {config.env_file})")
    if config.secrets_dir is not None:
        lines.append(f"(and from files in the secrets directory {config.secrets_dir})")
    for model, users in models.items():
        who = ", ".join(users)
        lines.append("")
        lines.append(f"{model.__name__}" + (f" (used by {who})" if who else ""))
        doc = (model.__doc__ or "").strip().splitlines()
        if doc and doc[0]:
            lines.append(f"  {doc[0]}")
        for name, field in model.model_fields.items():
            env = " | ".join(config.env_names(model, name))
            secret = ", secret" if is_secret(field) else ""
            lines.append(f"  {env}")
            lines.append(f"      {type_name(field.annotation)}, {default_text(field)}{secret}")
            if field.description:
                lines.append(f"      {field.description}")
    lines.append("")
    return "\n".join(lines)
