import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_readme_demo_runs_and_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "dia2.demo", "--out", str(out), "--frames", "5"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    summary = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])
    assert summary["decoded_frames"] == 5 and len(summary["codebook0_of_decoded_frames"]) == 5
    assert summary["forward_vs_step_argmax_mismatch"] == 0.0


def test_demo_rejects_bad_frames(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dia2.demo", "--out", str(tmp_path), "--frames", "0"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
    )
    assert proc.returncode == 2 and "--frames must be at least 1" in proc.stderr
