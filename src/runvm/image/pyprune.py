"""The guest's Python: the import closure of the agent, compiled to sourceless bytecode.

The staged interpreter is Debian's python3.11 binary, which runs on the host as well (a
foreign architecture's under user-mode QEMU: ``runner``, see :mod:`runvm.image.emulate`), so
it imports the agent and the extra modules here, exactly as the guest would (``-I -S``, pure-
Python protobuf), and reports ``sys.modules``. Only those files are kept.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from runvm.errors import ImageError

#: Runs in the staged interpreter: argv = search paths (newline-separated), excluded modules
#: (comma-separated), modules to import ("pkg.*": each module of pkg that imports here).
#: It imports nothing itself, so sys.modules holds only what the imports pulled in.
_CLOSURE_SCRIPT = r"""
import os, sys
paths, excluded, names = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path[:0] = [p for p in paths.split("\n") if p]
for name in excluded.split(","):
    if name:
        sys.modules[name] = None
for name in names:
    if not name.endswith(".*"):
        __import__(name)
        continue
    package = __import__(name[:-2], fromlist=["__name__"])
    for directory in package.__path__:
        for entry in sorted(os.listdir(directory)):
            if entry.endswith(".py") and entry != "__init__.py":
                try:
                    __import__(package.__name__ + "." + entry[:-3])
                except ImportError:
                    pass
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
sys.stdout.write("".join(f + "\n" for f in sorted(f for f in files if f)))
"""

#: Compiles the listed files (relative to argv[1], one a line on stdin) to legacy
#: ``x.pyc`` next to ``x.py`` and removes the source. Hash-based pycs do not embed the
#: source's mtime, so the output does not depend on when the tree was checked out.
_COMPILE_SCRIPT = r"""
import os, py_compile, sys
root = sys.argv[1]
for rel in sys.stdin.read().splitlines():
    source = os.path.join(root, rel)
    py_compile.compile(source, cfile=source + "c", dfile="/" + rel, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    os.remove(source)
"""


def _run_python(
    python: Path, args: Sequence[str], what: str, stdin: str = "", runner: Sequence[str] = ()
) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python",
    }
    argv = [*runner, str(python), "-I", "-S", "-B", *args]
    try:
        proc = subprocess.run(
            argv, input=stdin, env=env, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise ImageError(f"{what}: cannot run {python}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise ImageError(f"{what} failed (exit {proc.returncode}) with {python}:\n{tail}")
    return proc.stdout


def modules_under(tree: Path, rel: str) -> list[str]:
    """Dotted names of the modules in ``tree/rel`` (a ``.py`` file or a package directory)."""
    path = tree / rel
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    names: list[str] = []
    for file in files:
        parts = list(file.relative_to(tree).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def closure(
    python: Path,
    modules: Sequence[str],
    paths: Sequence[Path],
    excluded: Sequence[str] = (),
    runner: Sequence[str] = (),
) -> list[Path]:
    """The files of every module that importing ``modules`` loads, sorted."""
    out = _run_python(
        python,
        ["-c", _CLOSURE_SCRIPT, "\n".join(map(str, paths)), ",".join(excluded), *modules],
        "importing the guest's Python modules",
        runner=runner,
    )
    return [Path(line) for line in out.splitlines() if line]


def keep(files: Iterable[Path], staging: Path, root: Path, owned: Path) -> None:
    """Copy the closure's staged files into ``root``; delete unused files under ``owned``.

    ``owned`` is the part of ``root`` (the shipped runvm and protobuf sources) that was
    copied in whole before the closure was taken.
    """
    kept: set[Path] = set()
    for file in files:
        if file.is_relative_to(root):
            kept.add(file)
        elif file.is_relative_to(staging):
            dst = root / file.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dst)
        else:
            raise ImageError(f"the guest's Python imported {file}, outside the image")
    for path in sorted(owned.rglob("*"), reverse=True):  # children before their directory
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path not in kept:
            path.unlink()


def compile_tree(python: Path, root: Path, runner: Sequence[str] = ()) -> int:
    """Replace every ``.py`` under ``root`` by sourceless bytecode; return how many."""
    sources = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    _run_python(python, ["-c", _COMPILE_SCRIPT, str(root)], "compiling bytecode",
                "\n".join(sources), runner)  # fmt: skip
    return len(sources)


def python_version(python: Path, runner: Sequence[str] = ()) -> str:
    out = _run_python(python, ["-c", "import sys; print(sys.version.split()[0])"], "python -V",
                      runner=runner)  # fmt: skip
    return out.strip()
