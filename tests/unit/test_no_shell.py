"""No shell ever runs on runvm's behalf: every child is an argv, never a command string."""

from __future__ import annotations

import ast
from pathlib import Path

import runvm

SOURCES = sorted(Path(runvm.__file__).parent.rglob("*.py"))
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash", "dash"}
SHELL_CALLS = {
    "system",
    "popen",
    "getoutput",
    "getstatusoutput",
    "create_subprocess_shell",
    "subprocess_shell",
}


def _problems(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        where = f"{path.name}:{node.lineno}"
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in SHELL_CALLS:
            found.append(f"{where}: {func.attr}()")
        for kw in node.keywords:
            if kw.arg == "shell" and not (
                isinstance(kw.value, ast.Constant) and kw.value.value is False
            ):
                found.append(f"{where}: shell=")
        first = node.args[0] if node.args else None
        if isinstance(first, ast.List | ast.Tuple) and first.elts:
            head = first.elts[0]
            if isinstance(head, ast.Constant) and head.value in SHELLS:
                found.append(f"{where}: runs {head.value}")
    return found


def test_sources_were_found() -> None:
    assert len(SOURCES) > 50


def test_no_shell_anywhere() -> None:
    problems = [p for path in SOURCES for p in _problems(path)]
    assert not problems, problems


def test_the_checker_sees_shells(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, subprocess\nos.system('x')\nsubprocess.run('x', shell=True)\n"
        "subprocess.run(['sh', '-c', 'x'])\n"
    )
    assert len(_problems(bad)) == 3
