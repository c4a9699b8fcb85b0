"""`runvm image build|show`: the guest kernel and initramfs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runvm import arch as arches
from runvm import config as cfg
from runvm.image.spec import VARIANTS


def add_parser(sub: Any) -> None:
    p = sub.add_parser("image", help="build or show the guest image")
    verbs = p.add_subparsers(dest="image_verb", metavar="ACTION", required=True)
    b = verbs.add_parser("build", help="build (or reuse the cached) guest kernel and initramfs")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--dir", type=Path, help="image cache directory")
    b.add_argument("--kernel", dest="variant", choices=VARIANTS,
                   help="debian: Debian's cloud kernel; minimal: built here from linux-source "
                   "with runvm's config (default: the config's image.variant)")  # fmt: skip
    b.add_argument("--variant", dest="variant", choices=VARIANTS, help=argparse.SUPPRESS)
    b.add_argument("--arch", choices=tuple(arches.ARCHES),
                   help="the guest's architecture (default: the config's hypervisor.arch, "
                   "auto: the host's)")  # fmt: skip
    b.set_defaults(func=build)
    s = verbs.add_parser("show", help="describe the current guest image")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--dir", type=Path, help="image cache directory")
    s.add_argument("--kernel", dest="variant", choices=VARIANTS,
                   help="default: the config's image.variant")  # fmt: skip
    s.add_argument(
        "--arch",
        choices=tuple(arches.ARCHES),
        help="default: the config's hypervisor.arch (auto: the host's)",
    )
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
    keys = ("arch", "variant", "kernel_package", "kernel_version", "kernel_release", "kernel",
            "kernel_pvh", "initrd", "sha256")  # fmt: skip
    for key in keys:
        print(f"{key + ':':16}{info.get(key)}")
    sizes = info.get("sizes", {})
    print(f"{'sizes:':16}" + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


def _variant(args: argparse.Namespace) -> str:
    return str(args.variant or cfg.load(args.config).image.variant)


def _arch(args: argparse.Namespace) -> str:
    return str(args.arch or arches.resolve(cfg.load(args.config).hypervisor.arch).name)


def build(args: argparse.Namespace) -> int:
    from runvm import image

    spec = image.ImageSpec(variant=_variant(args), arch=_arch(args))
    info = image.build(_dir(args), progress=lambda s: print(f"  {s}", file=sys.stderr),
                       force=args.force, spec=spec)  # fmt: skip
    _print(info.to_json(), False)
    return 0


def show(args: argparse.Namespace) -> int:
    from runvm import image

    _print(image.current(_dir(args), _variant(args), _arch(args)).to_json(), args.json)
    return 0
