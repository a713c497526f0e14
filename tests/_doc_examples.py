"""The ```python blocks of README.md and docs/*.md, sorted into what tests/test_docs_examples.py runs.

The rule (also in docs/testing.md, "Examples in these docs are tested"):

* a block that defines a top-level ``test_...`` function is a **test** block. A page's test
  blocks make one test module, in page order (a later block may use what an earlier one
  defined, as when a reader pastes them into one file);
* any other block whose first statement is an import is a **program**: complete on its own;
* every other python block is a **fragment** (a call shown out of context, a sketch with
  ``...`` or a top-level ``await``): it must only be valid Python.

An HTML comment on the line just before the opening fence gives a block directives, each
comment one directive:

* ``<!-- not run: REASON -->`` skips the block, reporting REASON;
* ``<!-- env: NAME=value ... -->`` is the environment a program runs with (what its reader
  would export); ``{redis_url}`` in a value is the URL of the tests' own redis-server.

Modules are written with each block at its own page line (blank lines in between), so a
traceback's or pyflakes' line number is the Markdown's.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

__all__ = ["Block", "Kind", "PAGES", "ROOT", "collect", "module_name", "page_module", "shown"]

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

Kind = Literal["tests", "program", "fragment"]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,}|~{3,})[ \t]*(?P<lang>[\w+-]*)")
DIRECTIVE = re.compile(r"^[ \t]*<!--\s*(?P<name>not run|env)\s*:\s*(?P<value>.*?)\s*-->[ \t]*$")


@dataclass(frozen=True)
class Block:
    """One ```python block: where it is, its code, and the directives of the comment above it."""

    page: Path
    line: int
    """The line of the opening fence (1-based); the code starts on the next one."""
    code: str
    not_run: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """``docs/http.md:42``: the page and the line of the opening fence."""
        return f"{shown(self.page)}:{self.line}"

    @cached_property
    def tree(self) -> ast.Module | None:
        """The parsed code, or ``None`` when it is not a module (a top-level ``await``, a syntax error)."""
        try:
            return ast.parse(self.code)
        except SyntaxError:
            return None

    @property
    def tests(self) -> dict[str, bool]:
        """The ``test_...`` functions the block defines, each with whether it is ``async``."""
        if self.tree is None:
            return {}
        return {
            node.name: isinstance(node, ast.AsyncFunctionDef)
            for node in self.tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        }

    @property
    def kind(self) -> Kind:
        """``tests``, ``program`` or ``fragment``, by the rule in this module's docstring."""
        if self.tests:
            return "tests"
        if self.tree is not None and self.tree.body and isinstance(self.tree.body[0], ast.Import | ast.ImportFrom):
            return "program"
        return "fragment"


def shown(page: Path) -> str:
    """A page's path as the ids show it: from the repository's root (a page elsewhere: as it is)."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def _directives(page: Path, line: int, comments: list[str]) -> tuple[str | None, dict[str, str]]:
    not_run: str | None = None
    env: dict[str, str] = {}
    for comment in comments:
        match = DIRECTIVE.match(comment)
        if match is None:
            continue
        if match["name"] == "not run":
            not_run = match["value"]
            continue
        for pair in shlex.split(match["value"]):
            name, sep, value = pair.partition("=")
            if not sep or not name:
                raise ValueError(f"{shown(page)}:{line}: <!-- env: ... --> wants NAME=value pairs, got {pair!r}")
            env[name] = value
    return not_run, env


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, ticks = opening["indent"], opening["ticks"]
        end = i + 1  # the closing fence: the same character, at least as long; or the page's end
        while end < len(lines) and not re.match(rf"^[ \t]*{ticks[0]}{{{len(ticks)},}}[ \t]*$", lines[end]):
            end += 1
        if opening["lang"] == "python":
            comments: list[str] = []
            above = i - 1
            while above >= 0 and DIRECTIVE.match(lines[above]):
                comments.insert(0, lines[above])
                above -= 1
            body = [text[len(indent) :] if text.startswith(indent) else text.lstrip() for text in lines[i + 1 : end]]
            not_run, env = _directives(page, i + 1, comments)
            blocks.append(Block(page, i + 1, "\n".join(body) + "\n", not_run, env))
        i = end + 1
    return blocks


def collect(pages: tuple[Path, ...] = PAGES) -> list[Block]:
    """Every ```python block of ``pages``, in page order."""
    return [block for page in pages for block in _blocks(page)]


def module_name(page: Path, prefix: str = "") -> str:
    """A module name for a page's code: ``docs/http.md`` -> ``http_md`` (``test_http_md`` with the prefix)."""
    return prefix + re.sub(r"\W", "_", page.name).lower()


def page_module(blocks: list[Block]) -> str:
    """The blocks' code as one module, each block at its own page line (blocks of one page, in order)."""
    lines: list[str] = []
    for block in blocks:
        lines += [""] * (block.line - len(lines))  # the fence's line and the prose above stay blank
        lines += block.code.splitlines()
    return "\n".join(lines) + "\n"
