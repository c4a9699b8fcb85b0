"""The import rules of the architecture (docs/design.md, "Packages and seams"), checked on
the source: which package may import which, who may hold the QEMU driver and the agent
client, no import cycle between modules. A rule that must bend is changed there and here
first; a debt that was paid off must leave :data:`DEBTS`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import runvm

SRC = Path(runvm.__file__).parent
ROOT = "runvm"
ANY = frozenset({
    "errors", "arch", "config", "files", "names", "oci", "process", "spawn", "trace", "ttrpc",
    "protocol", "hypervisor",
    "storage", "network", "ksm", "cache", "image", "agent", "runtime", "shim", "cli",
    "metrics",
})  # fmt: skip
RULES: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "arch": frozenset({"errors"}),  # the guest architectures' names: pure data
    "config": frozenset({"errors"}),
    "files": frozenset({"errors"}),
    "names": frozenset({"errors"}),
    "oci": frozenset({"errors"}),
    "process": frozenset({"errors", "files"}),
    "spawn": frozenset({"errors"}),
    "trace": frozenset(),  # the benchmarks' start-up marks: imports nothing of runvm
    "ttrpc": frozenset({"errors"}),
    "protocol": frozenset({"errors", "ttrpc"}),
    "hypervisor": frozenset({"errors", "arch", "config", "process", "files"}),
    # device specs come from hypervisor.base; mounts is the one mount(2) helper
    "storage": frozenset({"errors", "process", "files", "hypervisor"}),
    "network": frozenset({"errors", "protocol", "hypervisor", "storage"}),
    "ksm": frozenset({"errors", "config", "files", "process"}),
    "cache": frozenset({"errors", "config", "files", "names", "process", "hypervisor"}),
    "image": frozenset({"errors", "arch", "config", "oci", "files"}),
    "agent": frozenset({"errors", "protocol", "ttrpc", "oci"}),
    # the owner's Snapshot wire and the daemon behind `runvm metrics serve`; never the agent
    "metrics": frozenset({"errors", "config", "files", "names", "ttrpc"}),
    "runtime": ANY - {"cli", "shim", "agent"},
    # delete after a dead shim removes its mounts and network leftovers itself
    "shim": frozenset(
        {
            "errors",
            "config",
            "files",
            "names",
            "oci",
            "runtime",
            "ttrpc",
            "spawn",
            "trace",
            "storage",
            "network",
            "metrics",
        }
    ),
    "cli": ANY - {"shim", "agent"},
}
# Modules (prefixes) only some packages may import.
GUARDED = {
    "runvm.hypervisor.qemu": frozenset({"hypervisor", "runtime", "cache", "cli"}),
    "runvm.protocol.client": frozenset({"protocol", "runtime", "cli"}),
    "runvm.protocol.agent_pb2": frozenset({"protocol", "agent", "runtime", "network", "cli"}),
}
# Known breaks of the rules, to be paid off; each must still exist (the test says when not).
DEBTS: set[tuple[str, str]] = set()


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, ast.parse(path.read_text(), str(path))


def imports(tree: ast.Module, top_level_only: bool = False) -> Iterator[str]:
    """runvm modules imported (``from runvm import x`` names ``runvm.x``); with
    ``top_level_only``, those run at import time (not in functions or TYPE_CHECKING)."""
    nodes: list[ast.AST] = list(tree.body) if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith(f"{ROOT}."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == ROOT:
                yield from (f"{ROOT}.{a.name}" for a in node.names)
            elif node.module.startswith(f"{ROOT}."):
                yield node.module


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__version__" else ROOT


def violations() -> set[tuple[str, str, str]]:
    found = set()
    for name, tree in modules():
        mine = package(name)
        for target in set(imports(tree)):
            theirs = package(target)
            if theirs in (ROOT, mine):
                continue
            if theirs not in RULES.get(mine, frozenset()):
                found.add((name, f"{ROOT}.{theirs}", f"{mine} may not import {theirs}"))
            for guarded, allowed in GUARDED.items():
                if (target == guarded or target.startswith(f"{guarded}.")) and \
                        mine not in allowed:  # fmt: skip
                    found.add((name, guarded, f"{mine} may not import {guarded}"))
    return found


def test_packages_import_only_what_the_architecture_allows() -> None:
    found = violations()
    new = sorted(v for v in found if (v[0], v[1]) not in DEBTS)
    assert not new, "\n".join(f"{m}: {why}" for m, _, why in new)
    paid = DEBTS - {(m, t) for m, t, _ in found}
    assert not paid, f"no longer true, remove from DEBTS: {sorted(paid)}"


def test_every_package_has_a_rule() -> None:
    packages = {package(name) for name, _ in modules()} - {ROOT}
    assert packages == set(RULES), packages ^ set(RULES)


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for name, tree in modules():
        graph[name] = {t for t in imports(tree, top_level_only=True) if t != name}
    known = set(graph)

    def resolve(target: str) -> str | None:
        while target and target not in known:  # `from runvm.x import name` names a module
            target = target.rpartition(".")[0]
        return target or None

    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in graph[node]:
            dep = resolve(target)
            if dep is None or node.startswith(f"{dep}.") or dep in (node, ROOT):
                continue  # (a submodule may use what its own package exports)
            if state.get(dep) == 1:
                raise AssertionError(
                    "import cycle: " + " -> ".join([*path[path.index(dep) :], dep])
                )
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
