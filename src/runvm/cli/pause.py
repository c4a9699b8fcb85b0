"""`runvm pause ID` / `runvm resume ID`: freeze and thaw every process of the container."""

from __future__ import annotations

import argparse
from typing import Any

from runvm.cli import through


def add_parser(sub: Any) -> None:
    p = sub.add_parser("pause", help="freeze all processes of a container")
    p.add_argument("container_id", metavar="ID")
    p.set_defaults(func=pause)
    r = sub.add_parser("resume", help="thaw a paused container")
    r.add_argument("container_id", metavar="ID")
    r.set_defaults(func=resume)


def pause(args: argparse.Namespace) -> int:
    through.call(args, lambda agent: agent.pause_container(args.container_id))
    return 0


def resume(args: argparse.Namespace) -> int:
    through.call(args, lambda agent: agent.resume_container(args.container_id))
    return 0
