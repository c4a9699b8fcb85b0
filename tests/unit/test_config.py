from __future__ import annotations

from pathlib import Path

import pytest

from runvm import config as cfg
from runvm.errors import ConfigError


def test_defaults_when_file_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNVM_CONFIG", raising=False)
    monkeypatch.setattr(cfg, "DEFAULT_PATH", tmp_path / "none.toml")
    conf = cfg.load()
    assert conf.hypervisor.vcpus == 1 and conf.hypervisor.memory_mib == 256
    assert conf.hypervisor.accelerator == "auto"


def test_values_are_read(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[hypervisor]\nvcpus = 2\nmemory_mib = 512\nboot_timeout = 30\n'
                    '[agent]\nchannel = "virtio-serial"\n[network]\nmodel = "macvtap"\n'
                    '[storage]\nvirtiofs_cache = "none"\n')  # fmt: skip
    conf = cfg.load(path)
    assert conf.network.model == "macvtap" and conf.storage.virtiofs_cache == "none"
    assert (conf.hypervisor.vcpus, conf.hypervisor.memory_mib) == (2, 512)
    assert conf.hypervisor.boot_timeout == 30.0 and conf.agent.channel == "virtio-serial"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[hypervisor]\nvcpu = 2\n", "unknown key hypervisor.vcpu"),
        ("[hypervisr]\n", "unknown table [hypervisr]"),
        ("[hypervisor]\nvcpus = '2'\n", "hypervisor.vcpus must be int"),
        ("[hypervisor]\nvcpus = true\n", "hypervisor.vcpus must be int"),
        ("[hypervisor]\nvcpus = 0\n", "outside 1..256"),
        ("[hypervisor]\naccelerator = 'hvf'\n", "must be one of auto, kvm, tcg"),
        ("[hypervisor\n", "c.toml"),
        ("[network]\nmodel = 'bridge'\n", "must be one of tcfilter, macvtap, none"),
        ("[storage]\nvirtiofs_cache = 'metadata'\n", "must be one of auto, always, none"),
    ],
)
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        cfg.load(path)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.load(tmp_path / "missing.toml")
