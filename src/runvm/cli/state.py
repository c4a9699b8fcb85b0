"""`runvm state ID`: the OCI state of a container as JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from runvm.cli import common


def add_parser(sub: Any) -> None:
    p = sub.add_parser("state", help="print the state of a container")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    st = common.store(args)
    print(json.dumps(st.load(args.container_id).oci(), indent=2))
    return 0
