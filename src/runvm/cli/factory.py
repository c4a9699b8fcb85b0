"""`runvm factory init|status|destroy`: the VM template sandboxes are cloned from."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from runvm import config as cfg


def add_parser(sub: Any) -> None:
    p = sub.add_parser("factory", help="make, show or remove the VM template")
    verbs = p.add_subparsers(dest="factory_verb", metavar="ACTION", required=True)
    verbs.add_parser("init", help="boot and save the template (replaces an old one)").set_defaults(
        func=init
    )
    verbs.add_parser("status", help="describe the template (JSON)").set_defaults(func=status)
    verbs.add_parser("destroy", help="remove the template").set_defaults(func=destroy)


def init(args: argparse.Namespace) -> int:
    from runvm.runtime import template

    conf = cfg.load(args.config)
    tpl = asyncio.run(template.create(conf))
    note = "" if conf.factory.enable else " (set [factory] enable = true to clone from it)"
    print(f"template saved in {tpl.directory}: booted in {tpl.meta['boot_seconds']} s, "
          f"state {tpl.meta['state_bytes']} bytes{note}")  # fmt: skip
    return 0


def status(args: argparse.Namespace) -> int:
    from runvm.runtime import template

    print(json.dumps(template.status(cfg.load(args.config)), indent=2, sort_keys=True))
    return 0


def destroy(args: argparse.Namespace) -> int:
    from runvm.runtime import template

    conf = cfg.load(args.config)
    print("template removed" if template.destroy(conf) else f"no template in {conf.factory.dir}")
    return 0
