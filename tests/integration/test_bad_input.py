"""Bad input: a corpus of malformed bundles, configs and command lines.

Each case must end in a clear error that names the problem, a non-zero exit status, and
nothing left behind (the leak check: processes, mounts, sockets, state). The last test runs
the cases that need a live container against one, which must come through unharmed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import add_config

from runvm.image.busybox import make_bundle

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("vm_ready", "leak_check")]

Spec = dict[str, Any]
Mutate = Callable[[Spec, Path], None]


def setter(path: str, value: Any) -> Mutate:
    """Set (or, with value DELETE, remove) the field at a dotted path of config.json."""

    def mutate(spec: Spec, bundle: Path) -> None:
        *parents, last = path.split(".")
        node: Any = spec
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


DELETE = object()


def raw_config(data: bytes) -> Mutate:
    def mutate(spec: Spec, bundle: Path) -> None:
        spec.clear()
        spec["__raw__"] = data

    return mutate


def mount(**fields: Any) -> Mutate:
    def mutate(spec: Spec, bundle: Path) -> None:
        spec["mounts"].append(fields)

    return mutate


def no_config(spec: Spec, bundle: Path) -> None:
    spec.clear()
    spec["__raw__"] = None


def rootfs_is_a_file(spec: Spec, bundle: Path) -> None:
    spec["root"]["path"] = "afile"
    (bundle / "afile").write_text("x")


def deep(spec: Spec, bundle: Path) -> None:
    nested: Any = "x"
    for _ in range(200):
        nested = [nested]
    spec["annotations"] = {"deep": nested}
    spec["linux"]["deep"] = nested


def huge(spec: Spec, bundle: Path) -> None:
    spec["annotations"] = {"big": "x" * (5 << 20)}


# name -> (change to a valid bundle, words the error must contain)
BUNDLES: dict[str, tuple[Mutate, str]] = {
    "no config.json": (no_config, "config.json"),
    "invalid JSON": (raw_config(b'{"ociVersion": '), "config.json"),
    "empty config.json": (raw_config(b""), "config.json"),
    "config is an array": (raw_config(b"[1, 2]"), "config.json"),
    "config is binary": (raw_config(os.urandom(64) + b"\xff"), "config.json"),
    "no ociVersion": (setter("ociVersion", DELETE), "ociVersion"),
    "ociVersion 2.0": (setter("ociVersion", "2.0.0"), "ociVersion"),
    "ociVersion a number": (setter("ociVersion", 1), "ociVersion"),
    "no root": (setter("root", DELETE), "root"),
    "root.path missing": (setter("root.path", DELETE), "root"),
    "root.path a number": (setter("root.path", 7), "root.path"),
    "rootfs missing": (setter("root.path", "nowhere"), "nowhere"),
    "rootfs a file": (rootfs_is_a_file, "afile"),
    "args not a list": (setter("process.args", "sh"), "process.args"),
    "args empty": (setter("process.args", []), "args"),
    "args not strings": (setter("process.args", ["sh", 5]), "process.args"),
    "cwd relative": (setter("process.cwd", "tmp"), "cwd"),
    "uid negative": (setter("process.user.uid", -1), "uid"),
    "uid too big": (setter("process.user.uid", 2**40), "uid"),
    "env not a list": (setter("process.env", "A=1"), "process.env"),
    "env not strings": (setter("process.env", [1]), "process.env"),
    "terminal a string": (setter("process.terminal", "yes"), "terminal"),
    "rlimits not a list": (setter("process.rlimits", {}), "rlimits"),
    "unknown rlimit": (
        setter("process.rlimits", [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]),
        "RLIMIT_BOGUS",
    ),
    "unknown capability": (
        setter("process.capabilities", {"bounding": ["CAP_BOGUS"]}),
        "CAP_BOGUS",
    ),
    "mounts not a list": (setter("mounts", {}), "mounts"),
    "mount without destination": (mount(type="tmpfs", source="tmpfs"), "destination"),
    "mount destination relative": (mount(destination="etc/x", type="tmpfs"), "destination"),
    "mount destination traversal": (mount(destination="/../../etc", type="tmpfs"), ".."),
    "mount destination dotdot inside": (mount(destination="/a/../../b", type="tmpfs"), ".."),
    "mount options not a list": (
        mount(destination="/x", type="tmpfs", options="ro"),
        "options",
    ),
    "bind source missing": (
        mount(destination="/x", type="bind", source="/no/such/dir", options=["bind"]),
        "/no/such/dir",
    ),
    "hostname a number": (setter("hostname", 5), "hostname"),
    "namespaces not a list": (setter("linux.namespaces", "pid"), "namespaces"),
    "namespace without type": (setter("linux.namespaces", [{}]), "namespaces"),
    "unknown namespace type": (setter("linux.namespaces", [{"type": "bogus"}]), "bogus"),
    "host namespace path": (
        setter("linux.namespaces", [{"type": "network", "path": "/proc/1/ns/net"}]),
        "/proc/1/ns/net",
    ),
    "resources not an object": (setter("linux.resources", []), "resources"),
    "memory limit negative": (setter("linux.resources", {"memory": {"limit": -5}}), "-5"),
    "memory limit a string": (setter("linux.resources", {"memory": {"limit": "1G"}}), "'1G'"),
    "cpu period negative": (setter("linux.resources", {"cpu": {"period": -5}}), "period"),
    "pids limit absurd": (setter("linux.resources", {"pids": {"limit": 2**70}}), "pids.limit"),
    "seccomp unknown action": (
        setter("linux.seccomp", {"defaultAction": "SCMP_ACT_BOGUS"}),
        "SCMP_ACT_BOGUS",
    ),
    "annotations not an object": (setter("annotations", ["a"]), "annotations"),
    "hooks not an object": (setter("hooks", []), "hooks"),
    "hook path relative": (setter("hooks", {"prestart": [{"path": "bin/true"}]}), "path"),
    "nesting too deep": (deep, "deep"),
    "config too large": (huge, "large"),
    "rootfs device missing": (
        setter("annotations", {"io.runvm.rootfs.device": "/dev/nope"}),
        "/dev/nope",
    ),
}


def write_bundle(tmp_path: Path, mutate: Mutate) -> Path:
    bundle = tmp_path / "bundle"
    spec = make_bundle(bundle, ["true"])
    spec.setdefault("linux", {})
    mutate(spec, bundle)
    config = bundle / "config.json"
    if "__raw__" in spec:
        config.unlink()
        if spec["__raw__"] is not None:
            config.write_bytes(spec["__raw__"])
    else:
        config.write_text(json.dumps(spec))
    return bundle


def runvm(env: dict[str, str], *args: str, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with files as stdio (a monitor keeps them); return (status, stderr)."""
    err = Path(env["RUNVM_TEST_ROOT"]).parent / f"stderr.{time.monotonic_ns()}"
    with err.open("w+") as f:
        r = subprocess.run([sys.executable, "-m", "runvm.cli.main", "--root",
                            env["RUNVM_TEST_ROOT"], *args], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=f, timeout=timeout)  # fmt: skip
    text = err.read_text()
    err.unlink()
    return r.returncode, text


@pytest.mark.parametrize("name", list(BUNDLES))
def test_bad_bundle(name: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    mutate, words = BUNDLES[name]
    bundle = write_bundle(tmp_path, mutate)
    status, err = runvm(cli_env, "run", "--bundle", str(bundle), "c-bad")
    assert status != 0, f"{name}: exit 0"
    assert words in err, f"{name}: {err!r}"
    assert len(err) < 4000, f"{name}: a clear error, not a dump: {err!r}"


# name -> (argv after `runvm --root R`, words the error must contain); BUNDLE is a valid bundle
COMMANDS: dict[str, tuple[list[str], str]] = {
    "unknown command": (["frobnicate"], "invalid choice"),
    "unknown flag": (["create", "--frobnicate", "--bundle", "BUNDLE", "c1"], "frobnicate"),
    "create without id": (["create", "--bundle", "BUNDLE"], "ID"),
    "bundle missing": (["create", "--bundle", "/no/such/bundle", "c1"], "/no/such/bundle"),
    "id with a slash": (["create", "--bundle", "BUNDLE", "a/b"], "a/b"),
    "id dot-dot": (["create", "--bundle", "BUNDLE", ".."], "'..'"),
    "id empty": (["create", "--bundle", "BUNDLE", ""], "id"),
    "id too long": (["create", "--bundle", "BUNDLE", "x" * 1000], "1-128"),
    "id with a newline": (["create", "--bundle", "BUNDLE", "a\nb"], "id"),
    "id with a trailing newline": (["create", "--bundle", "BUNDLE", "ab\n"], "id"),
    "state by path traversal": (["state", "../../../etc"], "id"),
    "delete by path traversal": (["delete", "--force", "../x"], "id"),
    "state of nothing": (["state", "nothing"], "does not exist"),
    "start of nothing": (["start", "nothing"], "does not exist"),
    "kill of nothing": (["kill", "nothing", "KILL"], "does not exist"),
    "delete of nothing": (["delete", "nothing"], "does not exist"),
    "exec in nothing": (["exec", "nothing", "true"], "does not exist"),
    "pid file in a missing directory": (
        ["create", "--bundle", "BUNDLE", "--pid-file", "/no/such/dir/pid", "c1"],
        "/no/such/dir",
    ),
    "console socket missing": (
        ["create", "--bundle", "TTYBUNDLE", "--console-socket", "/no/such/socket", "c1"],
        "/no/such/socket",
    ),
    "terminal without console socket": (
        ["create", "--bundle", "TTYBUNDLE", "c1"],
        "console socket",
    ),
    "preserve-fds": (
        ["create", "--bundle", "BUNDLE", "--preserve-fds", "3", "c1"],
        "preserve-fds",
    ),
}

CONFIGS: dict[str, tuple[str, str]] = {
    "runvm.toml invalid": ("[hypervisor\n", "runvm.toml"),
    "runvm.toml unknown table": ("[frobnicate]\nx = 1\n", "frobnicate"),
    "runvm.toml unknown key": ("[hypervisor]\nfrobnicate = 1\n", "frobnicate"),
    "runvm.toml wrong type": ('[hypervisor]\nvcpus = "many"\n', "vcpus"),
    "runvm.toml zero vcpus": ("[hypervisor]\nvcpus = 0\n", "vcpus"),
    "runvm.toml absurd memory": ("[hypervisor]\nmemory_mib = 99999999999\n", "memory_mib"),
    "runvm.toml unknown machine": ('[hypervisor]\nmachine = "z80"\n', "z80"),
    "runvm.toml unknown accelerator": ('[hypervisor]\naccelerator = "warp"\n', "warp"),
    "runvm.toml dax on microvm": (
        '[image]\nvariant = "minimal"\ndax = true\n[hypervisor]\nmachine = "microvm"\n',
        "microvm machine has no PCI bus",
    ),
    "runvm.toml dax without a root image": (
        '[image]\nvariant = "debian"\ndax = true\n',
        "debian guest image has no root image",
    ),
    "runvm.toml dax with an explicit kernel": (
        '[image]\ndax = true\nkernel = "/boot/vmlinuz"\ninitrd = "/boot/initrd"\n',
        "cannot be combined with an explicit image.kernel",
    ),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_bad_command_line(name: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    argv, words = COMMANDS[name]
    bundle = write_bundle(tmp_path / "b", lambda spec, b: None)
    tty = write_bundle(tmp_path / "t", setter("process.terminal", True))
    args = [{"BUNDLE": str(bundle), "TTYBUNDLE": str(tty)}.get(a, a) for a in argv]
    status, err = runvm(cli_env, *args)
    assert status != 0, f"{name}: exit 0"
    assert words in err, f"{name}: {err!r}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_bad_runtime_config(name: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    text, words = CONFIGS[name]
    conf = Path(cli_env["RUNVM_CONFIG"])
    if name == "runvm.toml invalid":
        conf.write_text(text)
    else:
        add_config(conf, text)
    bundle = write_bundle(tmp_path, lambda spec, b: None)
    status, err = runvm(cli_env, "run", "--bundle", str(bundle), "c-conf")
    assert status != 0, f"{name}: exit 0"
    assert words in err, f"{name}: {err!r}"


def test_bad_requests_to_a_live_container(cli_env: dict[str, str], tmp_path: Path) -> None:
    """Misuse of a running container: each one refused, and the container unharmed."""
    bundle = write_bundle(tmp_path, setter("process.args", ["sh", "-c", "sleep 300"]))
    status, err = runvm(cli_env, "run", "--detach", "--bundle", str(bundle), "live")
    assert status == 0, err
    bad_process = tmp_path / "process.json"
    bad_process.write_text('{"args": 5}')
    bad_resources = tmp_path / "resources.json"
    bad_resources.write_text('{"memory": {"limit": "lots"}}')
    cases = {
        "second create of the same id": (
            ["create", "--bundle", str(bundle), "live"],
            "already exists",
        ),
        "second run of the same id": (["run", "--bundle", str(bundle), "live"], "already exists"),
        "delete while running": (["delete", "live"], "running"),
        "unknown signal name": (["kill", "live", "SIGFROB"], "SIGFROB"),
        "signal number out of range": (["kill", "live", "99"], "99"),
        "start twice": (["start", "live"], "running"),
        "exec with a bad process.json": (
            ["exec", "--process", str(bad_process), "live"],
            "args",
        ),
        "exec with no command": (["exec", "live"], "command"),
        "update with bad resources": (
            ["update", "--resources", str(bad_resources), "live"],
            "limit",
        ),
        "ps with an unknown format": (["ps", "--format", "xml", "live"], "xml"),
    }
    problems = []
    try:
        for name, (argv, words) in cases.items():
            status, err = runvm(cli_env, *argv)
            if status == 0 or words not in err:
                problems.append(f"{name}: exit {status}: {err!r}")
        status, err = runvm(cli_env, "exec", "live", "true")
        assert status == 0, f"the container was harmed: {err}"
    finally:
        runvm(cli_env, "delete", "--force", "live")
    assert not problems, "\n".join(problems)


def test_corpus_size() -> None:
    assert len(BUNDLES) + len(COMMANDS) + len(CONFIGS) + 10 >= 50
