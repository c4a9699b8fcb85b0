"""runtime-spec 1.1-1.3 fields: honoured ones pass with their shapes checked, the rest are
refused naming the field (runvm.oci.fields)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runvm.errors import ConfigError
from runvm.oci import parse_process, parse_spec
from runvm.oci.default import default_spec
from runvm.oci.fields import HONOURED, REFUSED, cpu_set


def spec_with(**process: Any) -> bytes:
    spec = default_spec()
    spec["ociVersion"] = "1.3.0"
    spec["process"].update(process)
    return json.dumps(spec).encode()


def test_honoured_process_fields_pass() -> None:
    parsed = parse_spec(spec_with(
        scheduler={"policy": "SCHED_DEADLINE", "runtime": 10**6, "deadline": 10**7,
                   "period": 10**7, "flags": ["SCHED_FLAG_RESET_ON_FORK"]},
        ioPriority={"class": "IOPRIO_CLASS_BE", "priority": 4},
        execCPUAffinity={"initial": "0", "final": "0-1"},
    ))  # fmt: skip
    assert parsed["process"]["ioPriority"]["priority"] == 4


@pytest.mark.parametrize(
    ("process", "field"),
    [
        ({"scheduler": {"policy": "SCHED_FAST"}}, "process.scheduler.policy"),
        ({"scheduler": {"policy": "SCHED_OTHER", "nice": 30}}, "process.scheduler.nice"),
        ({"scheduler": {"policy": "SCHED_RR", "flags": ["X"]}}, "process.scheduler.flags"),
        ({"ioPriority": {"class": "IOPRIO_CLASS_RT", "priority": 8}}, "ioPriority.priority"),
        ({"ioPriority": {"class": "BEST"}}, "process.ioPriority.class"),
        ({"execCPUAffinity": {}}, "process.execCPUAffinity"),
        ({"execCPUAffinity": {"final": "3-1"}}, "execCPUAffinity.final"),
    ],
)
def test_malformed_process_fields_name_the_field(process: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_spec(spec_with(**process))


def test_exec_refuses_per_process_fields() -> None:
    doc = {"args": ["true"], "cwd": "/", "ioPriority": {"class": "IOPRIO_CLASS_BE"}}
    with pytest.raises(ConfigError, match="ioPriority: runvm applies"):
        parse_process(json.dumps(doc).encode(), "process.json")


def test_memory_policy_default_is_accepted() -> None:
    spec = default_spec()
    spec["linux"]["memoryPolicy"] = {"mode": "MPOL_DEFAULT"}
    parse_spec(json.dumps(spec).encode())
    spec["linux"]["memoryPolicy"] = {"mode": "MPOL_INTERLEAVE", "nodes": "0-1"}
    with pytest.raises(ConfigError, match=r"linux\.memoryPolicy: not supported by runvm"):
        parse_spec(json.dumps(spec).encode())


def test_cpu_sets() -> None:
    assert cpu_set("0-2,5", "x") == {0, 1, 2, 5}
    for bad in ("", "a", "1-", "2-1", "9000"):
        with pytest.raises(ConfigError, match="x"):
            cpu_set(bad, "x")


def test_every_field_says_who_or_why() -> None:
    assert all(HONOURED.values()) and all(REFUSED.values())
    assert not HONOURED.keys() & REFUSED.keys()
