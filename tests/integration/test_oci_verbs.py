"""The rest of the OCI command line on a running container: pause/resume, update, events,
ps, list; and spec/features, which need no VM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import guest_arch, runvm_cli

from runvm.image.busybox import make_bundle

RUNVM = [sys.executable, "-m", "runvm.cli.main"]

cli = runvm_cli


def test_spec_and_features(tmp_path: Path, cli_env: dict[str, str]) -> None:
    cli(cli_env, "spec", "--bundle", str(tmp_path))
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["ociVersion"].startswith("1.") and spec["process"]["args"] == ["sh"]
    again = cli(cli_env, "spec", "--bundle", str(tmp_path), ok=False)
    assert again.returncode == 1 and "exists" in again.stderr
    features = json.loads(cli(cli_env, "features").stdout)
    assert "poststop" in features["hooks"] and features["linux"]["cgroup"]["v2"]


@pytest.mark.vm
@pytest.mark.usefixtures("vm_ready", "leak_check")
@pytest.mark.smoke
def test_pause_resume_update_events_ps_list(tmp_path: Path, cli_env: dict[str, str]) -> None:
    b = tmp_path / "bundle"
    # The counter is replaced by rename, so a reader never sees it half written.
    loop = (
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/c.new; mv /tmp/c.new /tmp/count; "
        "sleep 0.2; done"
    )
    make_bundle(b, ["sh", "-c", loop], arch=guest_arch())
    spec = json.loads((b / "config.json").read_text())
    spec["root"]["readonly"] = False
    (b / "config.json").write_text(json.dumps(spec))
    out = tmp_path / "out"
    with out.open("wb") as f:
        subprocess.run([*RUNVM, "--root", cli_env["RUNVM_TEST_ROOT"], "create", "--bundle", str(b),
                        "c-verbs"], env=cli_env, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                       check=True, timeout=180)  # fmt: skip
    try:
        cli(cli_env, "start", "c-verbs")
        listed = json.loads(cli(cli_env, "list", "--format", "json").stdout)
        assert [c["id"] for c in listed] == ["c-verbs"] and listed[0]["status"] == "running"
        assert cli(cli_env, "list", "-q").stdout.split() == ["c-verbs"]
        pids = json.loads(cli(cli_env, "ps", "--format", "json", "c-verbs").stdout)
        assert len(pids) >= 1 and all(isinstance(p, int) for p in pids)

        def count() -> int:
            r = cli(cli_env, "exec", "c-verbs", "cat", "/tmp/count")
            return int(r.stdout)

        cli(cli_env, "pause", "c-verbs")
        assert json.loads(cli(cli_env, "state", "c-verbs").stdout)["status"] == "paused"
        stats = json.loads(cli(cli_env, "events", "--stats", "c-verbs").stdout)
        assert stats["type"] == "stats" and stats["id"] == "c-verbs"
        assert stats["data"]["pids"]["current"] >= 1
        assert stats["data"]["memory"]["usage"]["usage"] > 0
        assert stats["data"]["cpu"]["usage"]["total"] > 0
        frozen = json.loads(cli(cli_env, "events", "--stats", "c-verbs").stdout)
        assert frozen["data"]["cpu"]["usage"]["total"] == stats["data"]["cpu"]["usage"]["total"]
        cli(cli_env, "resume", "c-verbs")
        assert json.loads(cli(cli_env, "state", "c-verbs").stdout)["status"] == "running"
        first = count()
        time.sleep(1.5)
        assert count() > first  # running again

        cli(cli_env, "update", "--memory", str(96 << 20), "--pids-limit", "50", "c-verbs")
        after = json.loads(cli(cli_env, "events", "--stats", "c-verbs").stdout)
        assert after["data"]["memory"]["usage"]["limit"] == 96 << 20
        assert after["data"]["pids"]["limit"] == 50
        too_big = cli(cli_env, "update", "--memory", str(64 << 30), "c-verbs", ok=False)
        assert too_big.returncode == 1 and "over the cap of" in too_big.stderr
    finally:
        cli(cli_env, "delete", "--force", "c-verbs", ok=False)
    assert not os.listdir(cli_env["RUNVM_TEST_ROOT"])
