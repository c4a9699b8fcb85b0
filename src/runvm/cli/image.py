"""`runvm image build|show`: the guest kernel and initramfs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runvm import config as cfg


def add_parser(sub: Any) -> None:
    p = sub.add_parser("image", help="build or show the guest image")
    verbs = p.add_subparsers(dest="image_verb", metavar="ACTION", required=True)
    b = verbs.add_parser("build", help="build (or reuse the cached) guest kernel and initramfs")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--dir", type=Path, help="image cache directory")
    b.set_defaults(func=build)
    s = verbs.add_parser("show", help="describe the current guest image")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--dir", type=Path, help="image cache directory")
    s.set_defaults(func=show)


def _dir(args: argparse.Namespace) -> Path | None:
    if args.dir:
        return Path(args.dir)
    conf = cfg.load(args.config)
    return Path(conf.image.dir) if conf.image.dir else None


def _print(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    for key in ("kernel_package", "kernel_version", "kernel_release", "kernel", "initrd", "sha256"):
        print(f"{key + ':':16}{info.get(key)}")
    sizes = info.get("sizes", {})
    print(f"{'sizes:':16}" + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


def build(args: argparse.Namespace) -> int:
    from runvm import image

    info = image.build(_dir(args), progress=lambda s: print(f"  {s}", file=sys.stderr),
                       force=args.force)  # fmt: skip
    _print(info.to_json(), False)
    return 0


def show(args: argparse.Namespace) -> int:
    from runvm import image

    _print(image.current(_dir(args)).to_json(), args.json)
    return 0
