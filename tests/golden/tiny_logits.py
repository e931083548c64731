"""Golden logits of a seeded tiny Dia2: what the model computes, stored, so that any change to
shared numerics code (layers, network, config parsing) shows up as a diff.

The stored file `tiny_logits.json` holds the geometry, the seeds and a few hundred logits of the
teacher-forced forward. Regenerate it only after a deliberate, explained change of numerics:

    .venv/bin/python -m tests.golden.tiny_logits

Weights come from `randomize_parameters` (numpy PCG64 draws, identical on every CPU), not from
torch's initialisers, so a change in module order or init code leaves the golden numbers alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dia2.model.config import parse_config
from dia2.model.network import Dia2Model
from dia2.tiny import TINY_GEOMETRY
from tests.conftest import random_tokens
from tests.parity.reference_model import randomize_parameters

GOLDEN_FILE = Path(__file__).with_name("tiny_logits.json")
WEIGHT_SEED, TOKEN_SEED, FRAMES = 2026, 5, 6
CB0_ENTRIES, DEPFORMER_ENTRIES = 16, 8  # leading vocab entries stored per row


def compute(geometry: dict, weight_seed: int, token_seed: int, frames: int) -> dict[str, list]:
    """The stored slices of the forward of one seeded grid [1, C, frames]:
    action [T, Va], cb0 [T, 16], depformer [T-1, K-1, 8] (as nested lists of floats)."""
    cfg = parse_config(geometry)
    model = Dia2Model.from_config(cfg, dtype=torch.float32).eval()
    randomize_parameters(model, weight_seed)
    tokens = random_tokens(cfg, batch=1, frames=frames, seed=token_seed)
    tokens[:, 1, ::2] = cfg.data.text_pad_token_id
    with torch.no_grad():
        out = model(tokens)
    return {
        "action": out.action_logits[0].tolist(),
        "cb0": out.cb0_logits[0, :, :CB0_ENTRIES].tolist(),
        "depformer": out.depformer_logits[0, :, :, :DEPFORMER_ENTRIES].tolist(),
    }


def regenerate() -> None:
    logits = compute(TINY_GEOMETRY, WEIGHT_SEED, TOKEN_SEED, FRAMES)
    record = {
        "about": "tests/golden/tiny_logits.py: float32 logits of a seeded tiny Dia2 (regenerate with "
        "`python -m tests.golden.tiny_logits` after a deliberate numerics change only)",
        "geometry": TINY_GEOMETRY,
        "weight_seed": WEIGHT_SEED,
        "token_seed": TOKEN_SEED,
        "frames": FRAMES,
        **logits,
    }
    GOLDEN_FILE.write_text(json.dumps(record, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    regenerate()
