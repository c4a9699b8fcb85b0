"""runvm: run OCI containers, each in its own lightweight VM (runc-compatible command line).

Contract: an error prints one line ``runvm: <message>`` on stderr (and, with ``--log``, one
log entry there; JSON with ``--log-format json``: level, msg, time) and exits 1; a usage error
exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from runvm import __version__
from runvm.cli import (
    cache,
    check,
    checkpoint,
    create,
    debug,
    delete,
    demo,
    events,
    factory,
    image,
    info,
    kill,
    ksm,
    logs,
    metrics,
    pause,
    ps,
    restore,
    run,
    start,
    state,
    update,
)  # fmt: skip
from runvm.cli import exec as exec_verb
from runvm.errors import RunvmError

VERBS = (create, start, state, kill, delete, run, exec_verb, ps, pause, update, events, info,
         checkpoint, restore,
         check, image, factory, cache, ksm, metrics, debug, logs, demo)  # fmt: skip


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps({"level": record.levelname.lower(), "msg": record.getMessage(),
                           "time": time})  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runvm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"runvm version {__version__}\n"
                        "spec: 1.0.2")  # fmt: skip
    parser.add_argument("--config", type=Path, help="runvm TOML config (/etc/runvm/config.toml)")
    parser.add_argument("--root", help="state directory (default /run/runvm/containers)")
    parser.add_argument("--log", help="log file (default stderr)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    parser.add_argument(
        "--systemd-cgroup",
        action="store_true",
        help="accepted: cgroups live in the guest, outside systemd's reach",
    )
    parser.add_argument("--rootless", default="false", help="only false/auto as root")
    parser.add_argument("--criu", help="accepted: CRIU runs in the container's VM")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb in VERBS:
        verb.add_parser(sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    handler: logging.Handler
    handler = logging.FileHandler(args.log) if args.log else logging.StreamHandler(sys.stderr)
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("runvm: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if args.debug else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _setup_logging(args)
        if args.rootless == "true":
            raise RunvmError("rootless mode is not supported: runvm needs root to run VMs")
        code: int = args.func(args)
    except RunvmError as exc:
        message = str(exc)
        if args.log:
            logging.getLogger("runvm").error("%s", message)
        print(f"runvm: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
