"""A deliberately naive Dia2 forward pass, written from `../shared/dia2-spec.md` section 3 alone.

It exists to check `dia2.model` against something that shares none of its code: it reads the
parameters by their checkpoint names (spec section 3) and recomputes every step with explicit
loops over heads, queries and stages, in float64. It imports nothing from
`dia2.model.layers` or `dia2.model.network`; a bug the two production paths share (training
forward and cached decoding both use `dia2.model.layers`) shows up here as a mismatch.

Spec facts encoded below, each in one place:
- RMSNorm: x / sqrt(mean(x^2) + eps) * w, eps = model.normalization_layer_epsilon;
- attention: grouped-query (query head h reads key/value head h // (H / H_kv)), per-head RMSNorm
  on q and k **before** RoPE, rotate-half RoPE with timescale min * (max/min) ** (2i/head_dim),
  softmax scale 1.0, causal;
- gated MLP: wo(act0(gate) * act1(up)), gate rows first in wi;
- pre-norm blocks with residuals; decoder RoPE positions are frame indices, depformer positions
  are stage indices; depformer stage s uses weight group weights_schedule[s] for depformer_in,
  in_proj (fused q, k, v) and out_proj; depformer logits cut to min(audio_pad, audio_bos).

Shapes: T frames, C = K + 2 channels, K codebooks, D width, H heads, hd head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dia2.model.config import Dia2Config

Params = dict[str, Tensor]


def randomize_parameters(model: nn.Module, seed: int) -> None:
    """Give every parameter seeded values that do not depend on the CPU or on module order.

    numpy's PCG64 uniform draws are exact integer arithmetic, so the same seed gives bit-identical
    weights on every machine; names are visited sorted, so reordering modules changes nothing.
    Norm weights get 1 +- 0.5 (all-ones weights would hide a norm weight applied in the wrong
    place); matrices get unit-variance outputs for unit-variance inputs.
    """
    rng = np.random.default_rng(seed)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(named):
            p = named[name]
            if name.endswith("norm.weight"):
                values = 1.0 + rng.uniform(-0.25, 0.25, p.shape)
            elif name.endswith("embedding.weight") or ".audio_embeds." in name:
                values = rng.uniform(-1.0, 1.0, p.shape) * math.sqrt(3.0)
            else:
                values = rng.uniform(-1.0, 1.0, p.shape) * math.sqrt(3.0 / p.shape[-1])
            p.copy_(torch.from_numpy(values).to(p.dtype))


def _silu(x: Tensor) -> Tensor:
    return x / (1.0 + torch.exp(-x))


def _gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _gelu_tanh(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {
    "silu": _silu,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "relu": lambda x: torch.clamp(x, min=0.0),
    "linear": lambda x: x,
}


@dataclass(frozen=True)
class Geometry:
    """What one attention stack needs: heads, head dim, eps, RoPE range (None: no RoPE)."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    eps: float
    rope: tuple[float, float] | None
    activations: tuple[str, str]


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """x [..., n] -> [..., n]: x / sqrt(mean(x^2) + eps) * weight, over the last dim."""
    mean_square = (x * x).sum(-1, keepdim=True) / x.shape[-1]
    return x / torch.sqrt(mean_square + eps) * weight


def rope(x: Tensor, positions: list[int], min_ts: float, max_ts: float) -> Tensor:
    """Rotate-half RoPE: x [T, H, hd] at the given positions.

    For i < hd/2, with a = pos / (min * (max/min) ** (2i/hd)):
    out[i] = x[i] cos a - x[i + hd/2] sin a;  out[i + hd/2] = x[i + hd/2] cos a + x[i] sin a.
    """
    hd = x.shape[-1]
    half = hd // 2
    angles = [[pos / (min_ts * (max_ts / min_ts) ** (2 * i / hd)) for i in range(half)] for pos in positions]
    cos = torch.tensor([[math.cos(a) for a in row] for row in angles], dtype=x.dtype)[:, None, :]
    sin = torch.tensor([[math.sin(a) for a in row] for row in angles], dtype=x.dtype)[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, norms: tuple[Tensor, Tensor], geo: Geometry) -> Tensor:
    """Causal grouped-query attention over T positions (position t = index t).

    q [T, H*hd], k and v [T, H_kv*hd] (projected, before norms) -> [T, H*hd].
    """
    T = q.shape[0]
    H, Hkv, hd = geo.n_heads, geo.n_kv_heads, geo.head_dim
    q = rms_norm(q.view(T, H, hd), norms[0], geo.eps)
    k = rms_norm(k.view(T, Hkv, hd), norms[1], geo.eps)
    v = v.view(T, Hkv, hd)
    if geo.rope is not None:
        q = rope(q, list(range(T)), *geo.rope)
        k = rope(k, list(range(T)), *geo.rope)
    out = torch.zeros(T, H, hd, dtype=q.dtype)
    per_kv = H // Hkv
    for h in range(H):
        kv = h // per_kv
        for i in range(T):
            # Softmax scale 1.0: the published model has no 1/sqrt(hd).
            scores = k[: i + 1, kv] @ q[i, h]  # keys 0..i: causal
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            out[i, h] = (weights[:, None] * v[: i + 1, kv]).sum(0)
    return out.reshape(T, H * hd)


def mlp(x: Tensor, wi: Tensor, wo: Tensor, activations: tuple[str, str]) -> Tensor:
    """x [T, D] -> [T, D]: wo(act0(gate) * act1(up)), gate = the first half of wi's rows."""
    hidden = wi.shape[0] // 2
    gate = torch.einsum("td,hd->th", x, wi[:hidden])
    up = torch.einsum("td,hd->th", x, wi[hidden:])
    act0, act1 = (ACTIVATIONS[a] for a in activations)
    return torch.einsum("th,dh->td", act0(gate) * act1(up), wo)


def decoder_layer(x: Tensor, p: Params, prefix: str, geo: Geometry) -> Tensor:
    """One main-stack block over frames: x [T, D] -> [T, D]; parameters `{prefix}...`."""
    h = rms_norm(x, p[prefix + "pre_norm.weight"], geo.eps)
    q = h @ p[prefix + "attn.q_proj.weight"].T
    k = h @ p[prefix + "attn.k_proj.weight"].T
    v = h @ p[prefix + "attn.v_proj.weight"].T
    norms = (p[prefix + "attn.q_norm.weight"], p[prefix + "attn.k_norm.weight"])
    x = x + attend(q, k, v, norms, geo) @ p[prefix + "attn.o_proj.weight"].T
    h = rms_norm(x, p[prefix + "post_norm.weight"], geo.eps)
    return x + mlp(h, p[prefix + "mlp.wi.weight"], p[prefix + "mlp.wo.weight"], geo.activations)


def depformer_layer(x: Tensor, p: Params, prefix: str, geo: Geometry, schedule: tuple[int, ...]) -> Tensor:
    """One depformer block over the stages of a frame: x [S, Dd] -> [S, Dd].

    Stage s projects with its group's fused in_proj (q, k, v rows in that order) and out_proj.
    """
    h = rms_norm(x, p[prefix + "pre_norm.weight"], geo.eps)
    q_dim, kv_dim = geo.n_heads * geo.head_dim, geo.n_kv_heads * geo.head_dim
    qs, ks, vs = [], [], []
    for s, g in enumerate(schedule):
        fused = p[f"{prefix}self_attention.in_proj.{g}.weight"] @ h[s]
        qs.append(fused[:q_dim])
        ks.append(fused[q_dim : q_dim + kv_dim])
        vs.append(fused[q_dim + kv_dim :])
    norms = (p[prefix + "self_attention.q_norm.weight"], p[prefix + "self_attention.k_norm.weight"])
    y = attend(torch.stack(qs), torch.stack(ks), torch.stack(vs), norms, geo)
    out = torch.stack([p[f"{prefix}self_attention.out_proj.{g}.weight"] @ y[s] for s, g in enumerate(schedule)])
    x = x + out
    h = rms_norm(x, p[prefix + "post_norm.weight"], geo.eps)
    return x + mlp(h, p[prefix + "mlp.wi.weight"], p[prefix + "mlp.wo.weight"], geo.activations)


def text_embedding(p: Params, prefix: str, main: Tensor, second: Tensor, pad: int) -> Tensor:
    """main_proj(E[main]) + (second != pad) * second_proj(E[second]); main, second [T] -> [T, D]."""
    table = p[prefix + "embedding.weight"]
    out = table[main] @ p[prefix + "main_proj.weight"].T
    keep = (second != pad).to(out.dtype)[:, None]
    return out + keep * (table[second] @ p[prefix + "second_proj.weight"].T)


@dataclass
class ReferenceOutput:
    """hidden [T, D] (final-normed), action [T, Va], cb0 [T, Vaudio], depformer [T-1, K-1, Vcut]."""

    hidden: Tensor
    action: Tensor
    cb0: Tensor
    depformer: Tensor


def _geometries(cfg: Dia2Config) -> tuple[Geometry, Geometry]:
    m = cfg.model
    rope_range = (m.rope_min_timescale, m.rope_max_timescale)
    dec, dep = m.decoder, m.depformer
    decoder = Geometry(
        dec.gqa_query_heads, dec.kv_heads, dec.gqa_head_dim, m.normalization_layer_epsilon, rope_range, m.mlp_activations
    )
    depformer = Geometry(
        dep.gqa_query_heads, dep.kv_heads, dep.gqa_head_dim, m.normalization_layer_epsilon,
        rope_range if dep.apply_rope else None, dep.mlp_activations,
    )
    return decoder, depformer


def reference_decoder(p: Params, cfg: Dia2Config, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Main stack over one grid tokens [C, T] -> (hidden [T, D], action [T, Va], cb0 [T, V])."""
    geo, _ = _geometries(cfg)
    K = cfg.num_codebooks
    x = text_embedding(p, "transformer.text_embed.", tokens[0], tokens[1], cfg.data.text_pad_token_id)
    for c in range(K):
        x = x + p[f"transformer.audio_embeds.{c}.weight"][tokens[2 + c]]
    for i in range(cfg.model.decoder.n_layer):
        x = decoder_layer(x, p, f"transformer.layers.{i}.", geo)
    hidden = rms_norm(x, p["transformer.norm.weight"], geo.eps)
    return hidden, hidden @ p["transformer.action_head.weight"].T, hidden @ p["transformer.cb0_head.weight"].T


def reference_depformer(p: Params, cfg: Dia2Config, hidden: Tensor, column: Tensor) -> Tensor:
    """Every stage for one frame: decoder hidden [D] of column t, tokens [C] of column t+1.

    Returns logits [K-1, Vcut]: stage s predicts codebook s+1 from codebooks 0..s of column t+1.
    """
    _, geo = _geometries(cfg)
    schedule = tuple(cfg.runtime.weights_schedule)
    stages = []
    for s, g in enumerate(schedule):
        x = p[f"depformer.depformer_in.{g}.weight"] @ hidden + p[f"depformer.audio_embeds.{s}.weight"][column[2 + s]]
        if s == 0 and cfg.model.depformer.text_embedding:
            pad = cfg.data.text_pad_token_id
            x = x + text_embedding(p, "depformer.text_embed.", column[0:1], column[1:2], pad)[0]
        stages.append(x)
    x = torch.stack(stages)
    for i in range(cfg.model.depformer.n_layer):
        x = depformer_layer(x, p, f"depformer.layers.{i}.", geo, schedule)
    x = rms_norm(x, p["depformer.norm.weight"], geo.eps)
    cut = min(cfg.data.audio_pad_token_id, cfg.data.audio_bos_token_id)
    return torch.stack([p[f"depformer.logits.{s}.weight"][:cut] @ x[s] for s in range(len(schedule))])


def reference_forward(model: nn.Module, cfg: Dia2Config, tokens: Tensor) -> ReferenceOutput:
    """The teacher-forced forward of one grid tokens [C, T], in float64, from the model's weights."""
    p = {name: value.detach().to(torch.float64).cpu() for name, value in model.state_dict().items()}
    tokens = tokens.cpu()
    hidden, action, cb0 = reference_decoder(p, cfg, tokens)
    T = tokens.shape[-1]
    dep = [reference_depformer(p, cfg, hidden[t], tokens[:, t + 1]) for t in range(T - 1)]
    return ReferenceOutput(hidden, action, cb0, torch.stack(dep))
