"""The ```python blocks of README.md and docs/*.md run as tests, so that a doc example cannot rot.

tests/_doc_examples.py sorts the blocks (the rule is in its docstring and at the end of
docs/testing.md); each block is one test, its id the page and the line of its opening fence:

* **test** blocks: a page's test blocks, written as one module into a temporary folder,
  run by pytest in a subprocess, every ``pytest.mark.anyio`` test on asyncio and trio
  (``--nacelle-backends``); each block's test asserts that the tests it defines passed
  (an ``async`` one on both backends) and that pyflakes finds nothing in its lines.
* **programs**: pyflakes finds nothing (an undefined name in a function that importing
  never calls, an unused import); the block, written into a temporary folder as a
  module, is imported in a subprocess (so a ``__main__`` guard does not serve forever);
  and every ``App`` left at module level and not served yet is booted in a subprocess,
  ``python -m nacelle_py run module:attribute``, until it logs that it is healthy, then
  stopped with SIGTERM (or it ends by itself): exit status 0. For the boot, every setting
  named ``port`` is 0 (servers take free ports) and logs are JSON.
* **fragments**: compiled (a top-level ``await`` allowed).

A block marked ``<!-- not run: REASON -->`` is reported as skipped with that reason.
The last section tests the gate itself: the rule on a made-up page, and rotten examples
that must fail.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
from _doc_examples import ROOT, Block, Kind, collect, module_name, page_module, shown
from _plugin import PLUGIN
from pyflakes.api import check as pyflakes_check
from pyflakes.reporter import Reporter

sys.path.insert(0, str(Path(__file__).resolve().parent / "scripts"))
from harness import AppProcess, clean_env  # noqa: E402

BLOCKS = collect()
PROBE_TIMEOUT = 60.0  # importing a program (its top-level code included)
BOOT_TIMEOUT = 60.0  # until an app logs that it is healthy, or that it has stopped by itself
STOP_TIMEOUT = 30.0  # from SIGTERM to the exit
PYTEST_TIMEOUT = 300.0  # one page's test module, on both backends

HEALTHY = "app healthy; supervising"
ENDED = ("app stopped", "app stopped with errors")
MARK = "doc-example-apps: "

PROBE = f"""
import importlib, json, sys
from nacelle_py import App
from nacelle_py.testing._access import started

SETTINGS = {{"port": "0", "log_encoding": "json"}}  # servers on free ports; logs the test can read
module = importlib.import_module(sys.argv[1])
apps = {{}}
for attribute, value in vars(module).items():
    if isinstance(value, App) and not started(value) and all(value is not seen for seen in apps.values()):
        apps[attribute] = value
found = {{
    attribute: {{
        app.config.env_names(model, field)[0]: value
        for model in app.settings_models()
        for field, value in SETTINGS.items()
        if field in model.model_fields
    }}
    for attribute, app in apps.items()
}}
print("\\n{MARK}" + json.dumps(found))
"""
"""``python -c PROBE module``: imports the module, prints the apps to boot, each with the env to boot it with."""


def blocks(kind: Kind) -> list[object]:
    """The blocks of ``kind`` as pytest params, those marked ``not run`` skipped with their reason."""
    return [
        pytest.param(
            block,
            id=block.id,
            marks=[pytest.mark.skip(reason=f"{block.id}: not run: {block.not_run}")] if block.not_run else [],
        )
        for block in BLOCKS
        if block.kind == kind
    ]


def flakes(code: str, page: Path) -> list[str]:
    """pyflakes' messages about ``code`` (``page:line:col: message``), warnings and syntax errors alike."""
    out, err = io.StringIO(), io.StringIO()
    pyflakes_check(code, shown(page), Reporter(out, err))
    return (out.getvalue() + err.getvalue()).splitlines()


def environment(block: Block | None, request: pytest.FixtureRequest | None) -> dict[str, str]:
    """This checkout's nacelle_py first on the path, JSON logs, and the block's ``env`` directive."""
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    for name, value in block.env.items() if block is not None else ():
        if "{redis_url}" in value:
            assert request is not None
            value = value.replace("{redis_url}", request.getfixturevalue("redis_url"))
        env[name] = value
    return env


# -- fragments ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", blocks("fragment"))
def test_fragment_is_python(block: Block) -> None:
    compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


# -- programs ----------------------------------------------------------------------------


def boot(block: Block, target: str, env: dict[str, str], folder: Path) -> None:
    """``nacelle-py run target`` until healthy (or ended by itself), then SIGTERM: exit status 0."""
    with AppProcess(["-m", "nacelle_py", "run", target], env, cwd=folder) as app:
        try:
            event = app.wait_for(lambda e: e.get("event") in (HEALTHY, *ENDED), BOOT_TIMEOUT, f"{HEALTHY!r}")
        except AssertionError:
            if app.proc.poll() is None:
                raise  # still running, never healthy: the message says how long it waited
            raise AssertionError(
                f"{block.id}: {target} exited {app.proc.poll()} before it was healthy\n{app.dump()}"
            ) from None
        if event["event"] == HEALTHY:
            app.send(signal.SIGTERM)
        status = app.wait(STOP_TIMEOUT)
        assert status == 0, f"{block.id}: {target} exited {status}\n{app.dump()}"


def run_program(block: Block, folder: Path, request: pytest.FixtureRequest) -> list[str]:
    """pyflakes, an ``import`` in a subprocess, then a boot of each App it left unserved; the apps booted."""
    module = module_name(block.page)
    code = page_module([block])
    problems = flakes(code, block.page)
    assert not problems, f"{block.id}: pyflakes:\n" + "\n".join(problems)
    (folder / f"{module}.py").write_text(code)
    env = environment(block, request)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
    )
    assert probe.returncode == 0, f"{block.id}: importing it failed\n{probe.stdout}\n{probe.stderr}"
    found: dict[str, dict[str, str]] = json.loads(probe.stdout.rpartition(MARK)[2])
    for attribute, app_env in found.items():
        boot(block, f"{module}:{attribute}", {**app_env, **env}, folder)
    return list(found)


@pytest.mark.parametrize("block", blocks("program"))
def test_program_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_program(block, tmp_path, request)


# -- test blocks -------------------------------------------------------------------------


@dataclass(frozen=True)
class PageRun:
    """A page's test module after one pytest run: each test id's outcomes, pyflakes' and pytest's output."""

    outcomes: dict[str, list[str]]
    flakes: list[str]
    output: str


def run_tests(page: Path, tests: list[Block], folder: Path) -> PageRun:
    """Run the test blocks of ``page`` as one module in ``folder``: pytest in a subprocess, both backends."""
    code = page_module(tests)
    name = module_name(page, "test_")
    (folder / f"{name}.py").write_text(code)
    report = folder / "report.xml"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *PLUGIN,
            "-p",
            "no:cacheprovider",
            "--nacelle-backends",
            "-v",
            f"--junitxml={report}",
            f"{name}.py",
        ],
        cwd=folder,
        env=environment(None, None),
        capture_output=True,
        text=True,
        timeout=PYTEST_TIMEOUT,
    )
    outcomes: dict[str, list[str]] = {}
    if report.exists():  # a usage error writes none: every test is then "not run", with pytest's output
        for case in ET.parse(report).iter("testcase"):
            results = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            outcomes.setdefault(case.get("name", ""), []).extend(results or ["passed"])
    return PageRun(outcomes, flakes(code, page), done.stdout + done.stderr)


def assert_tests_passed(block: Block, run: PageRun) -> None:
    """The tests ``block`` defines passed, the ``async`` ones on asyncio and trio; pyflakes is quiet on its lines."""
    last = block.line + len(block.code.splitlines())
    lines = [re.match(r"[^:]*:(\d+):", message) for message in run.flakes]  # no number: a syntax error's excerpt
    problems = [m for m, n in zip(run.flakes, lines) if n is None or block.line < int(n[1]) <= last]
    assert not problems, f"{block.id}: pyflakes:\n" + "\n".join(problems)
    for test, is_async in block.tests.items():
        for case in [f"{test}[asyncio]", f"{test}[trio]"] if is_async else [test]:
            outcome = run.outcomes.get(case)
            assert outcome == ["passed"], f"{block.id}: {case}: {outcome or 'not run'}\n{run.output}"


class PageRuns:
    """Each page's test module, run at most once in the session (the blocks of a page share one run)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._runs: dict[Path, PageRun] = {}

    def get(self, page: Path) -> PageRun:
        if page not in self._runs:
            tests = [b for b in BLOCKS if b.page == page and b.kind == "tests" and not b.not_run]
            self._runs[page] = run_tests(page, tests, self._tmp.mktemp(module_name(page)))
        return self._runs[page]


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> PageRuns:
    return PageRuns(tmp_path_factory)


@pytest.mark.parametrize("block", blocks("tests"))
def test_doc_tests_pass(block: Block, page_runs: PageRuns) -> None:
    assert_tests_passed(block, page_runs.get(block.page))


# -- the gate itself -----------------------------------------------------------------------

FENCE = "```"
PAGE = f"""# A made-up page

{FENCE}python
from nacelle_py import App

app = App("made-up")
{FENCE}

<!-- not run: needs a mainframe -->
{FENCE}python
import mainframe
{FENCE}

<!-- env: A=1 B="two words" -->
{FENCE}python
import os
{FENCE}

{FENCE}python
app.register(Thing())
{FENCE}

{FENCE}python
await thing.stop()
{FENCE}

````markdown
{FENCE}python
import shown_as_markdown
{FENCE}
````

1. In a list:

   {FENCE}python
   async def test_in_a_list() -> None:
       pass
   {FENCE}

{FENCE}sh
python -m made_up
{FENCE}
"""


def test_the_rule_sorts_a_pages_blocks(tmp_path: Path) -> None:
    page = tmp_path / "made-up.md"
    page.write_text(PAGE)
    found = collect((page,))
    assert [(b.line, b.kind) for b in found] == [
        (3, "program"),
        (10, "program"),
        (15, "program"),
        (19, "fragment"),
        (23, "fragment"),
        (35, "tests"),
    ]
    assert [b.not_run for b in found] == [None, "needs a mainframe", None, None, None, None]
    assert found[2].env == {"A": "1", "B": "two words"}
    assert found[5].tests == {"test_in_a_list": True} and found[5].code.startswith("async def")
    assert found[0].id == f"{page}:3"
    module = page_module([found[0], found[5]]).splitlines()
    assert (module[3], module[35]) == ("from nacelle_py import App", "async def test_in_a_list() -> None:")


def test_a_bad_env_directive_names_its_block(tmp_path: Path) -> None:
    page = tmp_path / "bad.md"
    page.write_text(f"<!-- env: JUST_A_NAME -->\n{FENCE}python\nimport os\n{FENCE}\n")
    with pytest.raises(ValueError, match=r"bad.md:2: <!-- env: ... --> wants NAME=value pairs, got 'JUST_A_NAME'"):
        collect((page,))


ROTTEN = {
    "undefined": (
        "import anyio\n\n\nasync def main() -> None:\n    await anyio.sleep(later)\n",
        r"rotten.md:6:\d+: undefined name 'later'",
    ),
    "import": ("from nacelle_py import Appp\n\napp = Appp('rotten')\n", "importing it failed"),
    "boot": (
        "from nacelle_py import App, Initializer\n\n\nclass Db(Initializer):\n    def init(self) -> None:\n"
        "        raise ConnectionError('unreachable')\n\n\napp = App('rotten')\napp.register(Db(), name='db')\n",
        "rotten_md:app exited 1",
    ),
    "settings": (
        "from pydantic_settings import BaseSettings\n\nfrom nacelle_py import App, Initializer, Inject\n\n\n"
        "class DbSettings(BaseSettings):\n    url: str\n\n\nclass Db(Initializer):\n"
        "    settings: DbSettings = Inject()\n\n\napp = App('rotten')\napp.register(Db(), name='db')\n",
        "rotten_md:app exited 1 before it was healthy",
    ),
}


@pytest.mark.parametrize("rot", list(ROTTEN))
def test_a_rotten_program_fails(rot: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code, message = ROTTEN[rot]
    with pytest.raises(AssertionError, match=message):
        run_program(Block(tmp_path / "rotten.md", 1, code), tmp_path, request)


def test_a_program_runs_against_the_tests_redis(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code = (
        "from nacelle_py import App\nfrom nacelle_py.base import Dispatcher\n\n"
        "app = App('queued')\napp.register(Dispatcher(), name='jobs')\n"
    )
    block = Block(tmp_path / "queued.md", 1, code, env={"DISPATCHER_BACKEND": "redis", "REDIS_URL": "{redis_url}"})
    assert run_program(block, tmp_path, request) == ["app"]  # healthy means its Redis answered


def test_a_test_block_must_pass_on_both_backends(tmp_path: Path) -> None:
    code = (
        "import pytest\nimport sniffio\n\npytestmark = pytest.mark.anyio\n\n\n"
        "async def test_on_asyncio_only() -> None:\n    assert sniffio.current_async_library() == 'asyncio'\n"
    )
    block = Block(tmp_path / "flaky.md", 1, code)
    run = run_tests(block.page, [block], tmp_path)
    assert run.outcomes == {"test_on_asyncio_only[asyncio]": ["passed"], "test_on_asyncio_only[trio]": ["failure"]}
    with pytest.raises(AssertionError, match=r"test_on_asyncio_only\[trio\]: \['failure'\]"):
        assert_tests_passed(block, run)
