"""`runvm cache serve|status`: the daemon that keeps VMs ready for new sandboxes."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from runvm import config as cfg
from runvm.errors import ConfigError
from runvm.runtime.machine import machine_for


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cache", help="keep booted VMs ready for new sandboxes")
    verbs = p.add_subparsers(dest="cache_verb", metavar="ACTION", required=True)
    s = verbs.add_parser("serve", help="run the cache daemon (see docs/density.md for a unit)")
    s.add_argument("--size", type=int, help="VMs to keep ready (default [cache] size)")
    s.set_defaults(func=serve)
    verbs.add_parser("status", help="ready and handed-over VMs (JSON)").set_defaults(func=status)


def check(conf: cfg.RunvmConfig) -> None:
    """ConfigError for a config whose VMs the cache cannot hand over."""
    hv = conf.hypervisor
    if hv.user:
        raise ConfigError("cache: QEMU as hypervisor.user is not supported for cached VMs")
    if machine_for(conf) == "microvm":
        raise ConfigError("cache: a handed-over VM gets its share and NICs hot-plugged; "
                          'microvm cannot: set hypervisor.machine = "pc" or "q35"')  # fmt: skip


def serve(args: argparse.Namespace) -> int:
    from runvm.cache import server
    from runvm.cache.pool import Pool
    from runvm.runtime.pooled import PooledBoot

    conf = cfg.load(args.config)
    check(conf)
    size = args.size if args.size is not None else conf.cache.size
    if not 1 <= size <= 1024:
        raise ConfigError(f"cache: --size {size} is outside 1..1024")
    asyncio.run(server.serve(Pool(conf, size, PooledBoot(conf)), Path(conf.cache.socket)))
    return 0


def status(args: argparse.Namespace) -> int:
    from runvm.cache.client import request

    conf = cfg.load(args.config)
    try:
        reply, _ = request(Path(conf.cache.socket), {"op": "status"}, 5.0)
    except OSError as exc:
        print(f"no cache daemon on {conf.cache.socket}: {exc.strerror or exc}")
        return 1
    print(json.dumps(reply, indent=2, sort_keys=True))
    return 0
