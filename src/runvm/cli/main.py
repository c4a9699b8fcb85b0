"""Entry point: parse global flags, dispatch to one verb module, map errors to exit codes.

Contract: a :class:`RunvmError` prints one line ``runvm: <message>`` on stderr and exits 1;
a usage error exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from runvm import __version__
from runvm.cli import check, demo, image, run
from runvm.errors import RunvmError

VERBS = (check, image, demo, run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runvm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"runvm version {__version__}")
    parser.add_argument(
        "--config", type=Path, help="runvm TOML config (default /etc/runvm/config.toml)"
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="runvm: %(levelname)s %(message)s",
    )
    try:
        code: int = args.func(args)
    except RunvmError as exc:
        print(f"runvm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
