"""Config skips an environment source that would find nothing: every kind of name is still read.

``Config`` builds an ``EnvSettingsSource`` per prefix only when the environment
has a variable that source may read (docs/performance.md, "Boot and unwind").
These pin that nothing the sources read is missed: prefixed and plain names,
nested fields, string aliases, case-sensitive models, a model's own prefix.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from nacelle_py import Config


class Inner(BaseModel):
    depth: int = 0


class Plain(BaseSettings):
    tick: float = 1.0
    inner: Inner = Inner()

    model_config = SettingsConfigDict(env_nested_delimiter="__")


class Aliased(BaseSettings):
    socket: str = "none"
    port: int = Field(0, validation_alias="LISTEN_PORT")


class Sensitive(BaseSettings):
    Mode: str = "off"

    model_config = SettingsConfigDict(case_sensitive=True)


class Owned(BaseSettings):
    size: int = 1

    model_config = SettingsConfigDict(env_prefix="POOL_")


def test_nothing_set_gives_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("S_TICK", "TICK", "S_INNER__DEPTH", "INNER__DEPTH"):
        monkeypatch.delenv(name, raising=False)
    assert Config("S_").load(Plain) == Plain.model_construct()


def test_prefixed_plain_and_nested_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S_TICK", "2.5")
    monkeypatch.setenv("INNER__DEPTH", "3")  # the plain name, nested
    loaded = Config("S_").load(Plain)
    assert loaded.tick == 2.5
    assert loaded.inner.depth == 3


def test_a_nested_name_alone_is_read_under_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S_INNER__DEPTH", "4")
    assert Config("S_", fallback=False).load(Plain).inner.depth == 4


def test_a_string_alias_is_read_without_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PORT", "8080")
    assert Config("S_").load(Aliased).port == 8080


def test_case_sensitive_model_reads_its_exact_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S_Mode", "on")
    assert Config("S_").load(Sensitive).Mode == "on"
    monkeypatch.delenv("S_Mode")
    monkeypatch.setenv("S_MODE", "shouted")
    assert Config("S_").load(Sensitive).Mode == "off"


def test_a_model_prefix_is_read_with_and_without_the_app_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOL_SIZE", "5")
    assert Config("S_").load(Owned).size == 5
    monkeypatch.setenv("S_POOL_SIZE", "6")
    assert Config("S_").load(Owned).size == 6
