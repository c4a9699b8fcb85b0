"""Manifest round trip, the inputs hash, apt record parsing and the cache's `current`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from runvm import files
from runvm.errors import ImageError
from runvm.image import builder as image_build
from runvm.image import current, debs, manifest
from runvm.image.debs import DebPackage
from runvm.image.manifest import ImageInfo
from runvm.image.spec import DEFAULT_SPEC, ImageSpec

PKGS = [
    DebPackage("linux-image-6.1.0-56-cloud-amd64", "6.1.192-2", "amd64", "a" * 64),
    DebPackage("zlib1g", "1:1.2.13.dfsg-1", "amd64", "b" * 64),
]
AGENT = {"runvm/__init__.py": b"", "runvm/agent/main.py": b"def main(): pass\n"}


def _info(directory: Path) -> ImageInfo:
    return ImageInfo(
        kernel=directory / "vmlinuz",
        kernel_pvh="",
        root_image="",
        initrd=directory / "initrd.img",
        arch="amd64",
        variant="debian",
        kernel_release="6.1.0-56-cloud-amd64",
        kernel_package=PKGS[0].name,
        kernel_version=PKGS[0].version,
        kernel_sha256=PKGS[0].sha256,
        python_version="3.11.2",
        packages={p.name: p.version for p in PKGS},
        sha256=directory.name,
        initrd_sha256="c" * 64,
        sizes={"kernel": 1, "initrd": 2, "initrd_uncompressed": 3},
        modules=("/lib/modules/x/virtio.ko", "/lib/modules/x/virtio_net.ko"),
        tools="/var/lib/runvm/images/x/tools",
    )


def test_inputs_hash_is_stable_and_order_free() -> None:
    digest = manifest.inputs_hash(PKGS, AGENT, DEFAULT_SPEC)
    assert digest == manifest.inputs_hash(list(reversed(PKGS)), dict(reversed(AGENT.items())),
                                          ImageSpec())  # fmt: skip
    assert len(digest) == 64 and int(digest, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        lambda p, a, s: ([dataclasses.replace(p[0], version="6.1.193-1"), p[1]], a, s),
        lambda p, a, s: ([p[0], dataclasses.replace(p[1], sha256="d" * 64)], a, s),
        lambda p, a, s: (p, {**a, "runvm/agent/main.py": b"def main(): return 1\n"}, s),
        lambda p, a, s: (p, {**a, "runvm/agent/extra.py": b""}, s),
        lambda p, a, s: (p, a, dataclasses.replace(s, kernel_modules=("virtio_pci",))),
        lambda p, a, s: (p, a, dataclasses.replace(s, zstd_level=3)),
        lambda p, a, s: (p, a, dataclasses.replace(s, arch="arm64")),
    ],
)
def test_inputs_hash_changes_with_any_input(change: object) -> None:
    before = manifest.inputs_hash(PKGS, AGENT, DEFAULT_SPEC)
    assert callable(change)
    assert manifest.inputs_hash(*change(PKGS, AGENT, DEFAULT_SPEC)) != before


def test_agent_digest_separates_names_from_contents() -> None:
    assert manifest.agent_digest({"ab": b"c"}) != manifest.agent_digest({"a": b"bc"})


def test_manifest_round_trip(tmp_path: Path) -> None:
    info = _info(tmp_path / ("e" * 64))
    info.kernel.parent.mkdir()
    manifest.write(info, info.kernel.parent)
    data = json.loads((info.kernel.parent / "manifest.json").read_text())
    assert data["kernel"] == str(info.kernel) and data["modules"] == list(info.modules)
    assert data == info.to_json()
    assert manifest.load(info.kernel.parent) == info


def test_manifest_is_strict() -> None:
    data = _info(Path("/x/y")).to_json()
    with pytest.raises(ImageError, match="not a guest image manifest"):
        ImageInfo.from_json({**data, "extra": 1})
    with pytest.raises(ImageError, match="malformed"):
        ImageInfo.from_json({**data, "sizes": {"kernel": "big"}})
    with pytest.raises(ImageError, match="malformed"):
        ImageInfo.from_json({**data, "python_version": 3.11})


def test_current_without_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ImageError, match=r"no guest image built; run `runvm image build`"):
        current(tmp_path)
    monkeypatch.setenv("RUNVM_IMAGE_DIR", str(tmp_path / "env"))
    assert image_build.default_cache_dir() == tmp_path / "env"
    with pytest.raises(ImageError, match="no guest image built"):
        current()


def test_current_follows_symlink(tmp_path: Path) -> None:
    info = _info(tmp_path / ("f" * 64))
    info.kernel.parent.mkdir()
    manifest.write(info, info.kernel.parent)
    (tmp_path / "current").symlink_to(info.kernel.parent.name)
    with pytest.raises(ImageError, match="incomplete"):
        current(tmp_path)
    info.kernel.write_bytes(b"k")
    info.initrd.write_bytes(b"i")
    assert current(tmp_path) == info


def test_each_variant_and_architecture_has_its_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runvm import arch as arches

    monkeypatch.setattr(arches, "host", lambda: arches.ARCHES["amd64"])
    info = _info(tmp_path / ("f" * 64))
    info.kernel.parent.mkdir()
    manifest.write(info, info.kernel.parent)
    info.kernel.write_bytes(b"k")
    info.initrd.write_bytes(b"i")
    (tmp_path / "debian-arm64").symlink_to(info.kernel.parent.name)
    assert current(tmp_path, "debian", "arm64") == info
    with pytest.raises(ImageError, match=r"no debian guest image built for amd64; run "
                       r"`runvm image build --kernel debian`$"):  # fmt: skip
        current(tmp_path, "debian")
    with pytest.raises(ImageError, match=r"for arm64; run `runvm image build --kernel minimal "
                       r"--arch arm64`"):  # fmt: skip
        current(tmp_path, "minimal", "arm64")


def test_shipped_sources(tmp_path: Path) -> None:
    (tmp_path / "runvm/agent/__pycache__").mkdir(parents=True)
    (tmp_path / "runvm/__init__.py").write_text("")
    (tmp_path / "runvm/agent/main.py").write_text("def main(): pass\n")
    (tmp_path / "runvm/agent/__pycache__/main.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "runvm/agent/notes.txt").write_text("")
    spec = ImageSpec(shipped=("runvm/__init__.py", "runvm/agent", "runvm/oci"))
    with pytest.raises(ImageError, match="runvm/oci is missing"):
        image_build.shipped_sources(tmp_path, spec)
    lenient = dataclasses.replace(spec, allow_missing_agent=True)
    files = image_build.shipped_sources(tmp_path, lenient)
    assert files == {"runvm/__init__.py": b"", "runvm/agent/main.py": b"def main(): pass\n"}
    (tmp_path / "runvm/agent/main.py").unlink()
    strict = ImageSpec(shipped=("runvm/__init__.py", "runvm/agent"))
    with pytest.raises(ImageError, match=r"entry module runvm\.agent\.main"):
        image_build.shipped_sources(tmp_path, strict)


APT_SHOW = """\
Package: linux-image-cloud-amd64
Version: 6.1.192-2
Architecture: amd64
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
Description: Linux for x86-64 cloud (meta-package)
 continued description
SHA256: 00be21c0

Package: zlib1g
Version: 1:1.2.13.dfsg-1
Architecture: amd64
SHA256: 1234
"""


def test_parse_apt_records() -> None:
    first, second = debs.parse_stanzas(APT_SHOW)
    assert first["Depends"] == "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
    assert first["Description"].endswith("\ncontinued description")
    assert second == {
        "Package": "zlib1g",
        "Version": "1:1.2.13.dfsg-1",
        "Architecture": "amd64",
        "SHA256": "1234",
    }
    pkg = DebPackage("zlib1g", second["Version"], "amd64", "1234")
    assert pkg.filename == "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"
    assert pkg.download_spec == "zlib1g:amd64=1:1.2.13.dfsg-1"
    assert dataclasses.replace(pkg, architecture="all").download_spec == "zlib1g=1:1.2.13.dfsg-1"


def test_packages_of_another_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked qualified (``name:arm64``); an ``all`` package has no such record and is found by
    its bare name; one apt does not know for that architecture names the fix."""
    records = {
        "crun:arm64": "Package: crun\nVersion: 1.8.1-1\nArchitecture: arm64\nSHA256: 11\n",
        "python3-pyroute2": "Package: python3-pyroute2\nVersion: 0.7.2-2\n"
                            "Architecture: all\nSHA256: 22\n",
        "crun": "Package: crun\nVersion: 1.8.1-1\nArchitecture: amd64\nSHA256: 33\n",
    }  # fmt: skip
    asked: list[list[str]] = []

    def apt(argv: list[str], cwd: Path | None = None, hint: str = "") -> str:
        if argv == ["dpkg", "--print-architecture"]:
            return "amd64\n"
        asked.append(argv[3:])
        return "\n".join(records.get(name, "") for name in argv[3:])

    monkeypatch.setattr(debs, "_run", apt)
    got = debs.packages(["crun", "python3-pyroute2"], "arm64")
    assert asked == [["crun:arm64", "python3-pyroute2:arm64"], ["python3-pyroute2"]]
    assert [(p.name, p.architecture, p.sha256) for p in got] == [
        ("crun", "arm64", "11"), ("python3-pyroute2", "all", "22")]  # fmt: skip
    with pytest.raises(ImageError, match=r"busybox is not in the apt lists for arm64; run "
                       r"`dpkg --add-architecture arm64 && apt-get update`"):  # fmt: skip
        debs.packages(["busybox"], "arm64")
    with pytest.raises(ImageError, match="crun is not in the apt lists for riscv64"):
        debs.packages(["crun"], "riscv64")  # the amd64 record is not taken for another


def test_cached_deb_must_match_sha(tmp_path: Path) -> None:
    deb = tmp_path / "x_1_amd64.deb"
    deb.write_bytes(b"deb")
    good = DebPackage("x", "1", "amd64", files.sha256_file(deb))
    assert debs.cached(good, tmp_path) == deb
    assert debs.cached(dataclasses.replace(good, sha256="0" * 64), tmp_path) is None
