"""`runvm metrics serve [--listen ADDR]`: the Prometheus endpoint of this host's sandboxes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from runvm import config as cfg
from runvm.metrics import DEFAULT_INTERVAL, DEFAULT_LISTEN, DEFAULT_TIMEOUT


def add_parser(sub: Any) -> None:
    p = sub.add_parser("metrics", help="the Prometheus metrics endpoint")
    verbs = p.add_subparsers(dest="metrics_verb", metavar="ACTION", required=True)
    s = verbs.add_parser("serve", help="serve every sandbox's metrics (docs/metrics.md)")
    s.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"ADDRESS:PORT to serve /metrics on (default {DEFAULT_LISTEN})",
    )
    s.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"seconds between collections (default {DEFAULT_INTERVAL:g})",
    )
    s.add_argument("--timeout", type=float,
                   help="seconds an owner may take to answer before its sandboxes' "
                   f"figures are served stale (default {DEFAULT_TIMEOUT:g}, at most "
                   "--interval)")  # fmt: skip
    s.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from runvm.metrics.serve import serve as run

    conf = cfg.load(args.config)
    timeout = min(DEFAULT_TIMEOUT, args.interval) if args.timeout is None else args.timeout
    run(Path(conf.runtime.state_root), args.listen, args.interval, timeout)
    return 0
