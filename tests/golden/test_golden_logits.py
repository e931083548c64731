"""The seeded tiny model still computes the stored logits (tests/golden/tiny_logits.json)."""

import json

import torch

from tests.golden.tiny_logits import GOLDEN_FILE, compute

ATOL = 2e-5
"""This model's float32 logits lie within 3.4e-6 of a float64 recomputation (measured), so two
CPUs with different summation orders differ by well under 1e-5; planted bugs move them > 1e-2."""


def test_tiny_model_reproduces_the_golden_logits():
    golden = json.loads(GOLDEN_FILE.read_text())
    now = compute(golden["geometry"], golden["weight_seed"], golden["token_seed"], golden["frames"])
    for key in ("action", "cb0", "depformer"):
        expected = torch.tensor(golden[key], dtype=torch.float64)
        actual = torch.tensor(now[key], dtype=torch.float64)
        assert actual.shape == expected.shape, key
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0, msg=lambda m, k=key: f"{k} logits moved: {m}")


def test_the_golden_file_is_small_and_covers_both_stacks():
    golden = json.loads(GOLDEN_FILE.read_text())
    assert GOLDEN_FILE.stat().st_size < 16_000
    counts = {k: torch.tensor(golden[k]).numel() for k in ("action", "cb0", "depformer")}
    assert counts == {"action": 12, "cb0": 96, "depformer": 280}
    # Logits of a well-conditioned random model: spread out, not collapsed to a constant.
    assert torch.tensor(golden["depformer"]).std() > 0.3 and torch.tensor(golden["cb0"]).std() > 0.3


def test_the_golden_logits_are_the_specs():
    """Regenerating the file after a numerics bug would bless the bug; the stored numbers must
    also equal the independent float64 reference (tests/parity/reference_model.py)."""
    from dia2.model.config import parse_config
    from dia2.model.network import Dia2Model
    from tests.conftest import random_tokens
    from tests.parity.reference_model import randomize_parameters, reference_forward

    golden = json.loads(GOLDEN_FILE.read_text())
    cfg = parse_config(golden["geometry"])
    model = Dia2Model.from_config(cfg, dtype=torch.float32)
    randomize_parameters(model, golden["weight_seed"])
    tokens = random_tokens(cfg, batch=1, frames=golden["frames"], seed=golden["token_seed"])
    tokens[:, 1, ::2] = cfg.data.text_pad_token_id
    ref = reference_forward(model, cfg, tokens[0])
    cb0, dep = torch.tensor(golden["cb0"]), torch.tensor(golden["depformer"])
    torch.testing.assert_close(torch.tensor(golden["action"], dtype=torch.float64), ref.action, atol=1e-5, rtol=0)
    torch.testing.assert_close(cb0.double(), ref.cb0[:, : cb0.shape[1]], atol=1e-5, rtol=0)
    torch.testing.assert_close(dep.double(), ref.depformer[:, :, : dep.shape[2]], atol=1e-5, rtol=0)
