"""Every program and data file the project uses comes from a package ``scripts/install`` names.

A machine that had a package from earlier work hides a missing install step (protoc's
well-known types came with a package that only protoc's *Recommends* named). This check
finds what the project uses: command names and absolute paths in the Python sources, words in
the shell scripts, and the files ``.proto`` sources import; finds the Debian package owning
each, and fails unless that package is named in ``scripts/install``, is needed by one named
there (Depends or Pre-Depends, never Recommends), or is in every Debian base system
(priority required or important).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
SOURCES = ("src", "tests", "bench")
SHELL = ("scripts/install", "scripts/test", ".ci/run")
PROTO_INCLUDE = Path("/usr/include")
COMMAND = re.compile(r"[a-z][a-z0-9._+-]*")
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/etc/")
NOT_PROGRAMS = {"file", "time"}  # strings in the sources that name no program they run

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-query") is None, reason="needs Debian's dpkg (the project's platform)"
)


def named_packages() -> set[str]:
    """The packages in the ``packages=(...)`` list of scripts/install."""
    text = (TOP / "scripts/install").read_text()
    block = re.search(r"^packages=\((.*?)^\)", text, re.S | re.M)
    assert block, "scripts/install has no packages=( ... ) list"
    words = (line.split("#", 1)[0].split() for line in block.group(1).splitlines())
    return {w for line in words for w in line}


def _installed() -> tuple[dict[str, list[list[str]]], dict[str, set[str]], set[str]]:
    """Installed packages: their dependency groups (alternatives), what provides each
    virtual name, and the base system (Essential, priority required or important)."""
    fields = ("Package", "Status", "Priority", "Essential", "Pre-Depends}, ${Depends", "Provides")
    fmt = "\\t".join(f"${{{f}}}" for f in fields) + "\\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    deps: dict[str, list[list[str]]] = {}
    provides: dict[str, set[str]] = {}
    base: set[str] = set()
    for line in out.splitlines():
        name, status, priority, essential, depends, provided = line.split("\t")
        if not status.endswith(" installed"):
            continue
        name = name.split(":")[0]
        deps[name] = [_alternatives(group) for group in depends.split(",") if group.strip()]
        for virtual in _alternatives(provided.replace(",", "|")):
            provides.setdefault(virtual, set()).add(name)
        if essential == "yes" or priority in ("required", "important"):
            base.add(name)
    return deps, provides, base


def _alternatives(group: str) -> list[str]:
    names = (alt.strip().split(" ")[0].split(":")[0] for alt in group.split("|"))
    return [n for n in names if n]


def allowed_packages() -> set[str]:
    """The named packages and the base system, with everything they depend on."""
    deps, provides, base = _installed()
    seen: set[str] = set()
    todo = [*named_packages(), *base]
    while todo:
        name = todo.pop()
        for real in {name, *provides.get(name, ())} & deps.keys():
            if real in seen:
                continue
            seen.add(real)
            for group in deps[real]:
                todo.extend(group)  # any installed alternative may be the one in use
    return seen


def _python_strings(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _shell_words(path: Path) -> Iterator[str]:
    for line in path.read_text().splitlines():
        yield from re.split(r"[\s;|&()=\"'`$]+", line.split("#", 1)[0])


def used_words() -> Iterator[tuple[str, str]]:
    """(word, where) for every string a source could run or read."""
    for top in SOURCES:
        for path in sorted((TOP / top).rglob("*.py")):
            for word in _python_strings(path):
                yield word, str(path.relative_to(TOP))
    for name in SHELL:
        for word in _shell_words(TOP / name):
            yield word, name
    for proto in sorted(TOP.glob("src/**/*.proto")):
        for imported in re.findall(r'^import\s+"([^"]+)"', proto.read_text(), re.M):
            if not (proto.parent / imported).exists():
                yield str(PROTO_INCLUDE / imported), str(proto.relative_to(TOP))


def system_files(words: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Files of the system the words name: command names found on PATH, absolute paths that
    exist; file -> where it is used."""
    found: dict[str, str] = {}
    for word, where in words:
        path: str | None = None
        if COMMAND.fullmatch(word) and word not in NOT_PROGRAMS:
            path = shutil.which(word)
        elif word.startswith(SYSTEM_DIRS) and " " not in word and os.path.isfile(word):
            path = word
        if path and path.startswith(SYSTEM_DIRS):
            found.setdefault(path, where)
    return found


def owners(paths: Iterable[str]) -> dict[str, str]:
    """path -> the package that ships it (for paths dpkg knows; symlinks through
    /etc/alternatives and merged /usr resolved)."""
    candidates: dict[str, str] = {}
    for path in paths:
        real = os.path.realpath(path)
        for c in {path, real, *(p.replace("/usr/", "/", 1) for p in (path, real))}:
            candidates[c] = path
    out = subprocess.run(["dpkg-query", "-S", *candidates], capture_output=True, text=True)
    found: dict[str, str] = {}
    for line in out.stdout.splitlines():
        packages, _, file = line.partition(": ")
        if file in candidates and ", " not in packages and not packages.startswith("diversion"):
            found.setdefault(candidates[file], packages.split(":")[0])
    return found


def test_scripts_install_names_every_package_the_project_uses() -> None:
    files = system_files(used_words())
    assert "/usr/lib/qemu/virtiofsd" in files  # the scan sees absolute paths
    assert shutil.which("ip") in files  # and command names
    allowed = allowed_packages()
    problems = [
        f"{path} (used in {files[path]}) comes from {package}, which scripts/install "
        "does not name (nor does anything it names depend on it)"
        for path, package in sorted(owners(files).items())
        if package not in allowed
    ]
    assert not problems, "\n".join(problems)


def test_the_check_catches_a_package_only_recommended() -> None:
    """protobuf-compiler only recommends libprotobuf-dev, whose any.proto shim_api imports:
    the closure must not count Recommends."""
    deps, _, _ = _installed()
    if "protobuf-compiler" not in deps:
        pytest.skip("protobuf-compiler is not installed (scripts/install names it)")
    assert not any("libprotobuf-dev" in group for group in deps["protobuf-compiler"])
    used = system_files(used_words())
    assert str(PROTO_INCLUDE / "google/protobuf/any.proto") in used
