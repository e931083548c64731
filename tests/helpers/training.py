"""The trainer run in-process on the tiny-cpu preset, as the e2e training tests run it."""

from __future__ import annotations

from pathlib import Path

from finetune.outputs import RunPaths
from finetune.train import main
from tests.conftest import REPO_ROOT

PRESET = str(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml")
# No samples and no evaluation unless a test asks: the tests below are about training.
QUIET = ["eval.scripts=[]", "eval.every=0", "eval.at_start=false"]


def train(out: Path, bundle: Path, corpus: Path, *overrides: str, name: str = "run") -> tuple[int, RunPaths]:
    """`finetune/train.py --config PRESET` on `bundle` and `corpus` into out/name: (exit code, the run's paths)."""
    args = ["--config", PRESET, f"model.base={bundle}", f"data.corpus={corpus}", f"output.dir={out}",
            f"output.name={name}"]
    return main([*args, *overrides]), RunPaths(out / name)
