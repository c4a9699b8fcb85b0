"""Entry point of ``containerd-shim-runvm-v2`` (runtime ``io.containerd.runvm.v2``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from runvm import trace
from runvm.errors import RunvmError
from runvm.shim.cmdline import parse_args

PROG = "containerd-shim-runvm-v2"


def main(argv: Sequence[str] | None = None) -> int:
    if trace.enabled():
        trace.mark("shim exec", trace.process_started())
        trace.mark("shim main")
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except RunvmError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.version:
        from runvm import __version__

        print(f"{PROG} version {__version__}")
        return 0
    try:
        if args.action == "start":
            from runvm.shim.start import start_main

            return start_main(args)
        from runvm.shim.delete import delete_main

        return delete_main(args)
    except RunvmError as exc:
        print(f"{PROG} {args.action}: {exc}", file=sys.stderr)
        return 1
