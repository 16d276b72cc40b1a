"""The README's test files pass as a user would run them: copied into an empty directory.

This is the harness's done-when criterion: with only the package installed, no conftest and
pytest-asyncio's default strict mode, ``pytest`` in that directory passes every test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
FILE_MARK = "# file: "
FILES = {
    body.splitlines()[0].removeprefix(FILE_MARK): body
    for body in re.findall(r"```python\n(.*?)```", README, re.S)
    if body.startswith(FILE_MARK)
}


def _tests_in(source: str) -> int:
    return len(re.findall(r"^async def test_", source, re.M))


def test_the_readme_has_the_example_files() -> None:
    """The README carries the pytest-asyncio example and the anyio one, as test files."""
    assert set(FILES) == {"test_scaling.py", "test_with_anyio.py"}
    assert all(_tests_in(body) for body in FILES.values())


def test_readme_test_files_pass_in_an_empty_directory(tmp_path: Path) -> None:
    """pytest, run in a directory holding only the README's files, passes all their tests."""
    for name, body in FILES.items():
        (tmp_path / name).write_text(body, encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no conftest, no ini
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "asyncio: mode=Mode.STRICT" in out
    assert f"{sum(map(_tests_in, FILES.values()))} passed" in out, out
