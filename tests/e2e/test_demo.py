import json
import os
import subprocess
import sys

import soundfile as sf

from tests.conftest import REPO_ROOT


# Two short turns (about 30 frames): the demo's own script is three times as long, and every step
# the test checks (bundle built into the cache, generate, stream, timestamps) is the same.
SHORT_SCRIPT = "[S1] Hello there, friend. [S2] Fine."


def test_readme_demo_speaks_the_script_on_the_tiny_default(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "DIA2_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dia2.demo", "--out", str(out), "--text", SHORT_SCRIPT],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "untrained" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["speech.wav", "timestamps.json"]
    summary = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])
    assert summary["stream_matches_generate"] is True and summary["script"] == SHORT_SCRIPT
    data, rate = sf.read(str(out / "speech.wav"))
    assert rate == 24000 and len(data) == summary["frames"] * 1920
    assert [w for w, _ in summary["words"]][:2] == ["Hello", "there,"]
    # The bundle was built into the cache and is reused.
    assert any(p.name.startswith("tiny-v") for p in (tmp_path / "cache").iterdir())
