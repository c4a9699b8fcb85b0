"""The shim binary's command line, socket address and pod grouping (protocols.md §2.2-2.4)."""

from __future__ import annotations

import hashlib

import pytest

from runvm.errors import ConfigError
from runvm.shim.cmdline import SOCKET_PATH_LIMIT, ShimArgs, group_id, parse_args, socket_address

# The argv containerd 1.6.20 was observed to pass to `start` (without the program name).
START = [
    "-namespace", "default", "-address", "/run/containerd/containerd.sock",
    "-publish-binary", "/usr/bin/containerd", "-id", "c1", "-debug", "start",
]  # fmt: skip


def test_start_as_containerd_runs_it() -> None:
    assert parse_args(START) == ShimArgs(
        action="start",
        namespace="default",
        address="/run/containerd/containerd.sock",
        publish_binary="/usr/bin/containerd",
        id="c1",
        debug=True,
    )


def test_delete_with_bundle() -> None:
    bundle = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c2"
    args = parse_args(
        ["-namespace", "k8s.io", "-address", "/a", "-publish-binary", "/p", "-id", "c2",
         "-bundle", bundle, "delete"]
    )  # fmt: skip
    assert args.action == "delete"
    assert args.bundle == bundle
    assert (args.debug, args.socket) == (False, "")


def test_go_flag_spellings() -> None:
    args = parse_args(
        ["--namespace=ns", "-address=/a=b", "-id", "-dash", "-socket", "s",
         "-debug=false", "-debug=true", "-debug=0", "start"]
    )  # fmt: skip
    assert (args.namespace, args.address, args.id, args.socket) == ("ns", "/a=b", "-dash", "s")
    assert args.debug is False
    assert args.publish_binary == "containerd"


def test_double_dash_ends_flags() -> None:
    assert parse_args(["-namespace", "n", "-address", "a", "-id", "i", "--", "start"]).action == (
        "start"
    )


def test_version_needs_no_action() -> None:
    assert parse_args(["-v"]) == ShimArgs(action=None, version=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing action: expected one of start, delete"),
        (START[:-1], "missing action"),
        ([*START[:-1], "serve"], "unknown action 'serve'"),
        ([*START, "extra"], "unexpected arguments after 'start': extra"),
        (["-bogus", *START], "flag provided but not defined: -bogus"),
        (["-id"], "flag needs an argument: -id"),
        (["-debug=maybe", "start"], "invalid boolean value 'maybe' for flag -debug"),
        (["---id", "x", "start"], "bad flag syntax: ---id"),
        (["-=x", "start"], "bad flag syntax"),
        (["-address", "a", "-id", "c1", "start"], "shim start: -namespace is required"),
        (["-namespace", "n", "-address", "a", "delete"], "shim delete: -id is required"),
        (["-namespace", "n", "-id", "c1", "start"], "-address is required"),
        # Go's flag package stops at the first non-flag, so flags after the action are extras.
        (["start", "-id", "c1"], "unexpected arguments after 'start'"),
    ],
)
def test_command_line_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


def test_socket_address_is_the_go_hash() -> None:
    address = socket_address("/run/containerd/containerd.sock", "default", "c1")
    digest = hashlib.sha256(b"/run/containerd/containerd.sock/default/c1").hexdigest()
    assert address == f"unix:///run/containerd/s/{digest}"
    assert len(address.removeprefix("unix://").encode()) < SOCKET_PATH_LIMIT


def test_socket_address_is_deterministic_and_distinct() -> None:
    one = socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1")
    assert one == socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1")
    # filepath.Join cleans: extra slashes do not change the address.
    assert one == socket_address("/run/containerd//containerd.sock/", "k8s.io", "pod1")
    assert one != socket_address("/run/containerd/containerd.sock", "k8s.io", "pod2")
    assert one != socket_address("/run/containerd/containerd.sock", "default", "pod1")


def test_socket_address_base_dir() -> None:
    address = socket_address("/a", "ns", "c1", socket_root="/tmp/s/")
    assert address.startswith("unix:///tmp/s/")
    assert len(address) == len("unix:///tmp/s/") + 64


def test_socket_address_too_long() -> None:
    with pytest.raises(ConfigError, match="longer than 106 bytes: use a shorter socket directory"):
        socket_address("/a", "ns", "c1", socket_root="/" + "d" * 41)
    # One byte shorter fits exactly at the limit.
    assert socket_address("/a", "ns", "c1", socket_root="/" + "d" * 40)


CRI = "io.kubernetes.cri.container-type"
CRI_SANDBOX = "io.kubernetes.cri.sandbox-id"


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, "c1"),
        ({"unrelated": "x"}, "c1"),
        ({CRI: "sandbox", CRI_SANDBOX: "c1"}, "c1"),
        ({CRI: "container", CRI_SANDBOX: "pod", "io.kubernetes.cri.sandbox-name": "n"}, "pod"),
        (
            {
                "io.kubernetes.cri-o.ContainerType": "container",
                "io.kubernetes.cri-o.SandboxID": "p",
            },
            "p",
        ),
        ({"io.kubernetes.cri-o.ContainerType": "sandbox"}, "c1"),
        ({"io.kubernetes.docker.type": "podsandbox"}, "c1"),
        ({"io.kubernetes.docker.type": "container", "io.kubernetes.sandbox.id": "d"}, "d"),
        # The containerd CRI key wins over the others.
        ({CRI: "sandbox", "io.kubernetes.docker.type": "container"}, "c1"),
    ],
)
def test_group_id(annotations: dict[str, str], expected: str) -> None:
    assert group_id(annotations, "c1") == expected


def test_group_id_errors() -> None:
    with pytest.raises(ConfigError, match="no sandbox id"):
        group_id({CRI: "container"}, "c1")
    with pytest.raises(ConfigError, match="unknown container type 'pod' in annotation"):
        group_id({CRI: "pod"}, "c1")
