"""Exact structural cross-checks against the published checkpoints (spec sections 2-3)."""

import pytest
import torch

from dia2.model.config import load_config
from dia2.model.network import Dia2Model
from tests.conftest import MODEL_CONFIGS


def spec_keys(cfg) -> dict[str, tuple[int, ...]]:
    """The checkpoint key set and shapes, written out from spec section 3 (independently of the model code)."""
    d, dec, dep = cfg.data, cfg.model.decoder, cfg.model.depformer
    K, D, Dd = d.channels - 2, dec.n_embd, dep.n_embd
    keys: dict[str, tuple[int, ...]] = {}
    r = dec.low_rank_dim or D
    keys["transformer.text_embed.embedding.weight"] = (d.text_vocab_size, r)
    keys["transformer.text_embed.main_proj.weight"] = (D, r)
    keys["transformer.text_embed.second_proj.weight"] = (D, r)
    for c in range(K):
        keys[f"transformer.audio_embeds.{c}.weight"] = (d.audio_vocab_size, D)
    for i in range(dec.n_layer):
        p = f"transformer.layers.{i}."
        q, kv = dec.gqa_query_heads * dec.gqa_head_dim, dec.kv_heads * dec.gqa_head_dim
        keys.update({
            p + "pre_norm.weight": (D,), p + "post_norm.weight": (D,),
            p + "attn.q_proj.weight": (q, D), p + "attn.k_proj.weight": (kv, D), p + "attn.v_proj.weight": (kv, D),
            p + "attn.o_proj.weight": (D, q), p + "attn.q_norm.weight": (dec.gqa_head_dim,),
            p + "attn.k_norm.weight": (dec.gqa_head_dim,),
            p + "mlp.wi.weight": (2 * dec.n_hidden, D), p + "mlp.wo.weight": (D, dec.n_hidden),
        })
    keys["transformer.norm.weight"] = (D,)
    keys["transformer.action_head.weight"] = (d.action_vocab_size, D)
    keys["transformer.cb0_head.weight"] = (d.audio_vocab_size, D)
    groups = sorted(set(cfg.runtime.weights_schedule))
    for s in range(K - 1):
        keys[f"depformer.audio_embeds.{s}.weight"] = (d.audio_vocab_size, Dd)
        keys[f"depformer.logits.{s}.weight"] = (d.audio_vocab_size, Dd)
    for g in groups:
        keys[f"depformer.depformer_in.{g}.weight"] = (Dd, D)
    if dep.text_embedding:
        rd = dep.low_rank_dim or Dd
        keys["depformer.text_embed.embedding.weight"] = (d.text_vocab_size, rd)
        keys["depformer.text_embed.main_proj.weight"] = (Dd, rd)
        keys["depformer.text_embed.second_proj.weight"] = (Dd, rd)
    for i in range(dep.n_layer):
        p = f"depformer.layers.{i}."
        q, kv = dep.gqa_query_heads * dep.gqa_head_dim, dep.kv_heads * dep.gqa_head_dim
        keys.update({
            p + "pre_norm.weight": (Dd,), p + "post_norm.weight": (Dd,),
            p + "self_attention.q_norm.weight": (dep.gqa_head_dim,),
            p + "self_attention.k_norm.weight": (dep.gqa_head_dim,),
            p + "mlp.wi.weight": (2 * dep.n_hidden, Dd), p + "mlp.wo.weight": (Dd, dep.n_hidden),
        })
        for g in groups:
            keys[p + f"self_attention.in_proj.{g}.weight"] = (q + 2 * kv, Dd)
            keys[p + f"self_attention.out_proj.{g}.weight"] = (Dd, q)
    keys["depformer.norm.weight"] = (Dd,)
    return keys


@pytest.mark.parametrize("name,total", [("dia2-1b", 1_076_244_736), ("dia2-2b", 1_919_556_608)])
def test_published_geometry_parameter_count_and_keys(name, total):
    cfg = load_config(MODEL_CONFIGS / f"{name}.json")
    model = Dia2Model.from_config(cfg, device="meta")
    assert sum(p.numel() for p in model.parameters()) == total
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = spec_keys(cfg)
    assert sorted(set(state) ^ set(expected)) == []
    assert state == expected
    assert not list(model.buffers()), "checkpoints hold parameters only"
    # Any schedule order over the same groups gives the same count.
    reordered = type(cfg.runtime)(tuple(reversed(cfg.runtime.weights_schedule)), cfg.runtime.max_context_steps)
    other = Dia2Model.from_config(type(cfg)(cfg.data, cfg.model, reordered, cfg.assets), device="meta")
    assert sum(p.numel() for p in other.parameters()) == total


def test_tiny_keys_with_depformer_text_embedding():
    from dia2.model.config import parse_config
    from tests.conftest import tiny_raw_config

    cfg = parse_config(tiny_raw_config(schedule=[0, 1, 1, 2], text_embedding=True))
    model = Dia2Model.from_config(cfg, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == spec_keys(cfg)


def test_bf16_weights_keep_float32_logits():
    from dia2.model.config import parse_config
    from tests.conftest import tiny_raw_config

    cfg = parse_config(tiny_raw_config())
    torch.manual_seed(0)
    model = Dia2Model.from_config(cfg, dtype=torch.bfloat16)
    tokens = torch.zeros(1, cfg.data.channels, 4, dtype=torch.long)
    out = model(tokens)
    assert out.hidden.dtype == torch.bfloat16
    assert out.cb0_logits.dtype == out.depformer_logits.dtype == torch.float32
    assert torch.isfinite(out.depformer_logits).all()
