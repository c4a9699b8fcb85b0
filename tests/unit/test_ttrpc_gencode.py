"""The committed ttrpc_pb2 files are exactly what protoc makes of ttrpc.proto."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import runvm.ttrpc

PACKAGE = Path(runvm.ttrpc.__file__).parent
GENERATED = ("ttrpc_pb2.py", "ttrpc_pb2.pyi")


@pytest.mark.skipif(shutil.which("protoc") is None, reason="protoc is not installed")
def test_generated_code_matches_proto(tmp_path: Path) -> None:
    subprocess.run(
        ["protoc", "-I.", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", "ttrpc.proto"],
        cwd=PACKAGE,
        check=True,
    )
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (PACKAGE / name).read_text(), (
            f"{name} is stale: run 'protoc -I. --python_out=. --pyi_out=. ttrpc.proto' in {PACKAGE}"
        )


def test_generated_code_imports_as_package_module() -> None:
    from runvm.ttrpc import ttrpc_pb2

    status = ttrpc_pb2.Status(code=5, message="gone")
    response = ttrpc_pb2.Response(status=status, payload=b"x")
    assert ttrpc_pb2.Response.FromString(response.SerializeToString()) == response
    assert ttrpc_pb2.DESCRIPTOR.package == "ttrpc"


def test_status_is_wire_compatible_with_google_rpc_status() -> None:
    """google.rpc.Status is {int32 code = 1; string message = 2; repeated Any details = 3}."""
    from google.protobuf.descriptor import FieldDescriptor as F

    from runvm.ttrpc import ttrpc_pb2

    fields = {f.name: f for f in ttrpc_pb2.Status.DESCRIPTOR.fields}
    assert (fields["code"].number, fields["code"].type) == (1, F.TYPE_INT32)
    assert (fields["message"].number, fields["message"].type) == (2, F.TYPE_STRING)
    assert fields["details"].number == 3
    details_type = fields["details"].message_type
    assert details_type is not None and details_type.full_name == "google.protobuf.Any"
    assert len(ttrpc_pb2.Status(details=[{}, {}]).details) == 2  # repeated
    # Tag 1 varint 9, tag 2 length 7 "not yet": the bytes Go's ttrpc sends for that status.
    wire = b"\x08\x09\x12\x07not yet"
    assert ttrpc_pb2.Status(code=9, message="not yet").SerializeToString() == wire
