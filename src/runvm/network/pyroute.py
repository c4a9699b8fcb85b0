"""pyroute2's submodules without its package root.

``import pyroute2`` (which any ``pyroute2.x`` import runs first) loads every module the
library registers as an entry point: NDB with sqlite3, IPDB, the ethtool and WireGuard
helpers and more, about 21 MiB in each shim and monitor process, none of which runvm uses.
:func:`module` registers the package as a bare package first, so that the submodules runvm
needs import on their own (about 12 MiB). An already imported full package is used as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

PACKAGE = "pyroute2"


def module(name: str) -> types.ModuleType:
    """The submodule ``name`` (``pyroute2.…``); ImportError if pyroute2 is not installed."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError(f"{PACKAGE} is not installed")
        bare = types.ModuleType(PACKAGE)
        bare.__path__ = list(spec.submodule_search_locations)
        sys.modules[PACKAGE] = bare
    return importlib.import_module(name)
