"""The README's examples run, print what it says, and its diagram is the table's."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from statemachine.cli import main
from statemachine.diagrams import export_lifecycle, mermaid_overview, states_markdown
from statemachine.lifecycle import DEFAULT_LIFECYCLE
from statemachine.recovery import rules_markdown
from tests.amqp_support import require_rabbitmq
from tests.libvirt_support import libvirt_module

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
FILE_MARK = "# file: "


def _examples() -> list[tuple[str, str]]:
    pairs = []
    for i, (lang, body) in enumerate(BLOCKS):
        if lang == "python" and body.startswith(FILE_MARK):
            continue  # a whole test file, run by pytest in tests/test_readme_testing.py
        if lang == "python":
            following = BLOCKS[i + 1] if i + 1 < len(BLOCKS) else ("", "")
            assert following[0] == "text", "each python example is followed by its output"
            pairs.append((body, following[1]))
    return pairs


def _commands() -> list[list[list[str]]]:
    """The ``$ ism …`` lines of each console block, in order (a block may build on itself:
    a simulation writes a store its next line verifies)."""
    blocks = []
    for lang, body in BLOCKS:
        lines = [
            shlex.split(line[2:])[1:] for line in body.splitlines() if line.startswith("$ ism ")
        ]
        if lang == "console" and lines:
            blocks.append(lines)
    return blocks


@pytest.mark.parametrize("example", _examples(), ids=lambda e: e[0].splitlines()[0][:40])
def test_python_example_prints_what_the_readme_says(example: tuple[str, str]) -> None:
    """Each Python example runs as written and prints exactly the text shown after it."""
    code, expected = example
    if "drivers.libvirt" in code:
        libvirt_module()  # skips without libvirt-python, fails under ISM_REQUIRE_SERVICES=1
    if "AmqpTransport(" in code:
        require_rabbitmq()  # skips without aio-pika or RabbitMQ, fails under the same rule
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue() == expected


@pytest.mark.parametrize("block", _commands(), ids=lambda b: " ".join(b[0])[:40])
def test_console_example_succeeds(
    block: list[list[str]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Each ``$ ism …`` line of the README exits 0, run in its block's order."""
    for argv in block:
        # the README's /tmp/ files go to this test's own directory: each run starts from fresh
        # stores (a second simulation into one store would add a second 'vm5'), and worktrees
        # testing at once on one machine do not open each other's stores
        argv = [arg.replace("/tmp/", f"{tmp_path}/") for arg in argv]
        assert main(argv) == 0, f"ism {' '.join(argv)}: {capsys.readouterr().err}"


def test_readme_diagram_is_the_tables() -> None:
    """The Mermaid overview in the README is the one generated from the lifecycle."""
    blocks = [body for lang, body in BLOCKS if lang == "mermaid"]
    assert blocks == [mermaid_overview(DEFAULT_LIFECYCLE)]


def test_readme_state_tables_are_the_tables() -> None:
    """The README's tables of states and actions are ``ism states --format markdown``."""
    begin, end = "<!-- ism states --format markdown -->\n", "<!-- end ism states -->"
    table = README[README.index(begin) + len(begin) : README.index(end)]
    assert table == states_markdown(export_lifecycle(DEFAULT_LIFECYCLE))


def test_readme_recovery_rules_are_the_rules() -> None:
    """The README's table of recovery rules is ``statemachine.recovery.RECOVERY_RULES``."""
    begin, end = "<!-- ism recovery rules -->\n", "<!-- end ism recovery rules -->"
    table = README[README.index(begin) + len(begin) : README.index(end)]
    assert table == rules_markdown()


def test_committed_diagram_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """``ism diagram --check`` passes on the committed diagrams/."""
    root = Path(__file__).parent.parent
    assert main(["diagram", "--check", "--root", str(root)]) == 0, capsys.readouterr().err


def test_two_commands_come_first() -> None:
    """The README opens with exactly the two commands, and CI runs the test one."""
    first = next(body for lang, body in BLOCKS if lang == "sh")
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
