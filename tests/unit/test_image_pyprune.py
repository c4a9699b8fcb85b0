"""The Python import closure and sourceless bytecode, with a throwaway agent package.

The host interpreter stands in for the staged one (the build uses Debian's python3.11).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runvm.errors import ImageError
from runvm.image import pyprune

PYTHON = Path(sys.executable)


def _agent(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    pkg = lib / "fakeagent"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(
        "import json\n"
        "from fakeagent import helper\n"
        "try:\n    import ssl\nexcept ImportError:\n    ssl = None\n"
        "def main():\n    return helper.VALUE + json.dumps(ssl is None)\n"
    )
    (pkg / "helper.py").write_text("VALUE = 'ok:'\n")
    (pkg / "unused.py").write_text("import tomllib\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("X = 1\n")
    return lib


def test_modules_under(tmp_path: Path) -> None:
    lib = _agent(tmp_path)
    assert pyprune.modules_under(lib, "fakeagent") == [
        "fakeagent",
        "fakeagent.helper",
        "fakeagent.main",
        "fakeagent.sub",
        "fakeagent.sub.deep",
        "fakeagent.unused",
    ]
    assert pyprune.modules_under(lib, "fakeagent/helper.py") == ["fakeagent.helper"]


def test_closure_follows_imports_and_exclusions(tmp_path: Path) -> None:
    lib = _agent(tmp_path)
    files = pyprune.closure(PYTHON, ["fakeagent.main"], [lib], excluded=["ssl", "_ssl"])
    names = {f.relative_to(lib).as_posix() for f in files if f.is_relative_to(lib)}
    assert names == {"fakeagent/__init__.py", "fakeagent/main.py", "fakeagent/helper.py"}
    stdlib = {f.name for f in files}
    assert "decoder.py" in stdlib  # json's
    assert "ssl.py" not in stdlib
    assert "tomllib" not in {f.parent.name for f in files}
    assert all(f.is_absolute() for f in files)


def test_closure_wildcard_takes_members_that_import(tmp_path: Path) -> None:
    files = pyprune.closure(PYTHON, ["encodings.*"], [])
    names = {f.name for f in files if f.parent.name == "encodings"}
    assert {"utf_8.py", "latin_1.py", "cp437.py", "idna.py"} <= names
    assert "mbcs.py" not in names  # Windows only: fails to import, skipped


def test_closure_failure_is_image_error(tmp_path: Path) -> None:
    lib = _agent(tmp_path)
    (lib / "fakeagent" / "broken.py").write_text("import no_such_module_here\n")
    with pytest.raises(ImageError, match="no_such_module_here"):
        pyprune.closure(PYTHON, ["fakeagent.broken"], [lib])


def test_keep_copies_staged_and_prunes_owned(tmp_path: Path) -> None:
    staging, root = tmp_path / "staging", tmp_path / "root"
    (staging / "usr/lib/py").mkdir(parents=True)
    (staging / "usr/lib/py/os.py").write_text("x")
    (staging / "usr/lib/py/big.py").write_text("x")
    owned = root / "usr/lib/runvm"
    (owned / "pkg/unused").mkdir(parents=True)
    for name in ("pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/unused/__init__.py"):
        (owned / name).write_text("")
    pyprune.keep(
        [staging / "usr/lib/py/os.py", owned / "pkg/__init__.py", owned / "pkg/a.py"],
        staging,
        root,
        owned,
    )
    kept = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert kept == ["usr/lib/py/os.py", "usr/lib/runvm/pkg/__init__.py", "usr/lib/runvm/pkg/a.py"]
    assert not (owned / "pkg/unused").exists()
    with pytest.raises(ImageError, match="outside the image"):
        pyprune.keep([Path("/etc/passwd")], staging, root, owned)


def test_compile_tree_makes_importable_sourceless_bytecode(tmp_path: Path) -> None:
    lib = _agent(tmp_path)
    assert pyprune.compile_tree(PYTHON, lib) == 6
    assert not list(lib.rglob("*.py"))
    assert (lib / "fakeagent/main.pyc").is_file()
    assert not list(lib.rglob("__pycache__"))
    code = f"import sys; sys.path.insert(0, {str(lib)!r}); "
    code += "import fakeagent.main as m; print(m.main())"
    out = subprocess.run(
        [str(PYTHON), "-I", "-S", "-B", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "ok:false"
    # Hash-based pycs: the same source compiles to the same bytes whatever its mtime.
    first = (lib / "fakeagent/helper.pyc").read_bytes()
    (lib / "fakeagent/helper.py").write_text("VALUE = 'ok:'\n")
    pyprune.compile_tree(PYTHON, lib)
    assert (lib / "fakeagent/helper.pyc").read_bytes() == first


def test_python_version() -> None:
    assert pyprune.python_version(PYTHON) == sys.version.split()[0]
