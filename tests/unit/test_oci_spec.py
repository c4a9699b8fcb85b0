from __future__ import annotations

import json
import re

import pytest

from runvm.errors import ConfigError
from runvm.oci import MAX_SPEC_BYTES, parse_process, parse_spec
from runvm.oci.default import default_spec


def dump(doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "version", ["1.0.0", "1.0.2", "1.0.2-dev", "1.1.0-rc.1", "1.1.0", "1.2.0", "1.2.1", "1.3.0"]
)
def test_every_1x_version_is_accepted(version: str) -> None:
    spec = default_spec()
    spec["ociVersion"] = version
    assert parse_spec(dump(spec))["ociVersion"] == version


@pytest.mark.parametrize("version", ["0.9.0", "2.0.0", "1", "1.x", "", "1.0.2 ", "11.0.0"])
def test_other_versions_are_refused_by_name(version: str) -> None:
    spec = default_spec()
    spec["ociVersion"] = version
    with pytest.raises(ConfigError, match=f"unsupported version {re.escape(repr(version))}"):
        parse_spec(dump(spec))


def test_default_spec_is_valid() -> None:
    spec = parse_spec(dump(default_spec(["echo", "hi"])))
    assert spec["process"]["args"] == ["echo", "hi"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("ociVersion"), "ociVersion is required"),
        (lambda s: s.update(ociVersion="2.0.0"), "unsupported version"),
        (lambda s: s.pop("root"), "root is required"),
        (lambda s: s["process"].update(args=[]), "process.args: must name the program"),
        (lambda s: s["process"].update(args="sh"), "process.args: must be array"),
        (lambda s: s["process"].update(env=["NOEQUALS"]), "process.env[0]"),
        (lambda s: s["process"].update(cwd="relative"), "must be an absolute path"),
        (lambda s: s["process"]["user"].update(uid=-1), "process.user.uid: out of range"),
        (lambda s: s["process"]["user"].update(uid=True), "process.user.uid: must be int"),
        (lambda s: s["mounts"].append({"destination": "rel"}), "mounts[7].destination"),
        (lambda s: s["linux"]["namespaces"].append({"path": "/x"}), "needs a string type"),
    ],
)
def test_invalid_specs_name_the_field(mutate: object, message: str) -> None:
    spec = default_spec()
    mutate(spec)  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_spec(dump(spec))


def test_limits() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        parse_spec(b" " * (MAX_SPEC_BYTES + 1))
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_spec(b"{")
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_spec(b'{"a":' + b"[" * 100 + b"]" * 100 + b"}")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_spec(b"[]")


def test_process_json() -> None:
    assert parse_process(b'{"args": ["ls"], "cwd": "/"}')["args"] == ["ls"]
    with pytest.raises(ConfigError, match=r"process\.json\.args"):
        parse_process(b'{"args": [1]}')


def test_resources_as_docker_sends_them_pass_and_bad_numbers_fail() -> None:
    from runvm.oci.resources import check_resources

    docker = {"blockIO": {"weight": 0}, "cpu": {"shares": 0, "quota": 0, "period": 0},
              "memory": {"limit": 0, "swap": -1}, "pids": {"limit": 0}, "devices": []}  # fmt: skip
    check_resources(docker, "r")
    for bad, word in (({"cpu": {"period": -1}}, "cpu.period"),
                      ({"memory": {"limit": "1G"}}, "'1G'"),
                      ({"blockIO": {"weight": 5000}}, "blockIO.weight")):  # fmt: skip
        with pytest.raises(ConfigError, match=word):
            check_resources(bad, "r")
