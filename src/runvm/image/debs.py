"""Debian packages: resolve with apt-cache, fetch with ``apt-get download``, unpack.

Debian's archive serves only current versions, so nothing is pinned: the candidate version
of each package is resolved at build time and its index SHA256 is part of the image hash.
Packages of another architecture than the host's come from the same lists once dpkg knows
it (``dpkg --add-architecture arm64 && apt-get update``, as scripts/install does).
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runvm import files
from runvm.errors import ImageError


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    architecture: str
    sha256: str  # of the .deb, from the package index

    @property
    def filename(self) -> str:
        """The name ``apt-get download`` gives the file (an epoch's ':' as '%3a')."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"

    @property
    def download_spec(self) -> str:
        """``name:arch=version`` (``name=version`` for an ``all`` package) for apt-get."""
        qualified = self.name if self.architecture == "all" else f"{self.name}:{self.architecture}"
        return f"{qualified}={self.version}"


def _run(argv: Sequence[str], cwd: Path | None = None, hint: str = "") -> str:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} not found: the image builder needs Debian's apt") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        fix = f"; {hint}" if hint else ""
        raise ImageError(f"{' '.join(argv)} failed (exit {proc.returncode}){fix}: {tail}")
    return proc.stdout


def host_arch() -> str:
    return _run(["dpkg", "--print-architecture"]).strip()


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """The RFC 822 stanzas in ``text`` (continuation lines joined)."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields = {}
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return stanzas


def _records(names: Sequence[str], hint: str) -> dict[str, dict[str, str]]:
    out = _run(["apt-cache", "show", "--no-all-versions", *names], hint=hint)
    return {fields.get("Package", ""): fields for fields in parse_stanzas(out)}


def show(names: Sequence[str], arch: str = "") -> dict[str, dict[str, str]]:
    """The apt records of the candidate versions of ``names``: of architecture ``arch`` (or
    ``all``) if given, else the host's. An ``all`` package has no ``name:arch`` record, so
    those not found qualified are looked up by their bare name."""
    hint = "run `apt-get update` and retry"
    if arch and arch != host_arch():
        hint = f"run `dpkg --add-architecture {arch} && apt-get update` and retry"
    records = _records([f"{n}:{arch}" for n in names] if arch else names, hint)
    unqualified = [n for n in names if n not in records] if arch else []
    if unqualified:
        found = _records(unqualified, hint)
        records.update({n: f for n, f in found.items() if f.get("Architecture") == "all"})
    for name in names:
        if "Version" not in records.get(name, {}):
            where = f" for {arch}" if arch else ""
            raise ImageError(f"package {name} is not in the apt lists{where}; {hint}")
    return records


def packages(names: Sequence[str], arch: str = "") -> list[DebPackage]:
    """The candidate versions of ``names`` (of ``arch`` or ``all``; default the host's), in
    order."""
    records = show(names, arch)
    result: list[DebPackage] = []
    for name in names:
        fields = records[name]
        if "SHA256" not in fields:
            raise ImageError(f"package {name}: the apt lists give no SHA256 for it")
        result.append(DebPackage(name, fields["Version"], fields["Architecture"], fields["SHA256"]))
    return result


def metapackage_target(name: str, arch: str = "") -> str:
    """The package a metapackage such as ``linux-image-cloud-amd64`` depends on."""
    depends = show([name], arch)[name].get("Depends", "")
    first = depends.split(",")[0].split("|")[0].split("(")[0].strip()
    if not first:
        raise ImageError(f"metapackage {name} depends on nothing")
    return first


def cached(pkg: DebPackage, debs_dir: Path) -> Path | None:
    """The downloaded .deb of exactly ``pkg``, if the cache holds an intact one."""
    path = debs_dir / pkg.filename
    if path.is_file() and files.sha256_file(path) == pkg.sha256:
        return path
    return None


def download(pkgs: Sequence[DebPackage], debs_dir: Path) -> dict[str, Path]:
    """Fetch ``pkgs`` into ``debs_dir`` in one apt-get run, reusing intact copies.

    Returns each package's file by name; other versions of these packages are deleted.
    """
    debs_dir.mkdir(parents=True, exist_ok=True)
    paths = {pkg.name: path for pkg in pkgs if (path := cached(pkg, debs_dir)) is not None}
    missing = [pkg for pkg in pkgs if pkg.name not in paths]
    if not missing:
        return paths
    with tempfile.TemporaryDirectory(dir=debs_dir, prefix=".download-") as tmp:
        specs = [pkg.download_spec for pkg in missing]
        _run(["apt-get", "download", "-q", *specs], cwd=Path(tmp))
        for pkg in missing:
            got = Path(tmp, pkg.filename)
            if not got.is_file():
                raise ImageError(f"apt-get download {pkg.name}={pkg.version} wrote no {got.name}")
            actual = files.sha256_file(got)
            if actual != pkg.sha256:
                raise ImageError(
                    f"{got.name}: sha256 {actual} does not match the index ({pkg.sha256}); "
                    "run `apt-get update` and retry"
                )
            for old in debs_dir.glob(f"{pkg.name}_*_{pkg.architecture}.deb"):
                old.unlink()
            paths[pkg.name] = got.replace(debs_dir / pkg.filename)
    return paths


def extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
