"""Programs the guest runs only now and then (CRIU, for checkpoint and restore), kept beside
the image rather than in it: a sandbox's owner shares the directory into its guest for the
operation that needs it, so no boot unpacks them.

Contract: :func:`install` copies the ``tools`` (paths inside the staged packages) into
``out`` at the same paths, with every library they need that the image tree ``root`` does not
already have; in the guest they run with :data:`runvm.agent`'s loader path set to the
library directories :func:`library_dirs` finds under the shared copy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from runvm.image import libs


def install(staging: Path, root: Path, out: Path, tools: Iterable[str]) -> None:
    wanted = list(tools)
    for rel in wanted:
        libs.install(staging, out, rel)
    for rel in libs.needed_closure(staging, out, [Path(rel) for rel in wanted]):
        if not os.path.lexists(root / rel):  # the guest has it already
            libs.install(staging, out, rel)


def library_dirs(top: Path) -> list[Path]:
    """The directories under ``top`` that hold shared libraries (multiarch ones first)."""
    found = [p.parent for p in top.rglob("*.so*")]
    return sorted(set(found), key=lambda p: ("-linux-" not in p.name, str(p)))
