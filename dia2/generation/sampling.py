"""Sampling and classifier-free guidance (spec section 6).

Everything here is a pure tensor function (no host syncs), so a CUDA graph can capture a whole
frame's sampling.

CFG as the published runtime does it: guided = uncond + scale * (cond - uncond); the top
`filter_k` entries of `guided` form the allowed set; the token is sampled from the
**conditional** logits restricted to that set. With scale 1 there is no unconditional branch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How one stream is sampled."""

    temperature: float = 0.8
    """Softmax temperature; <= 0 means argmax (greedy)."""
    top_k: int = 50
    """Keep the k most likely tokens before drawing; <= 0 keeps all."""

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError(f"top_k must be an integer, got {self.top_k!r}")
        if self.temperature != self.temperature:  # NaN
            raise ValueError("temperature must be a number, got NaN")


def sample(logits: Tensor, config: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """logits [..., V] -> token ids [...]. Masked entries hold -inf."""
    if config.temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / config.temperature
    if 0 < config.top_k < logits.shape[-1]:
        kth = logits.topk(config.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def guide(cond: Tensor, uncond: Tensor | None, scale: float, filter_k: int) -> Tensor:
    """The conditional logits with everything outside CFG's allowed set masked to -inf.

    cond, uncond [..., V]; uncond None (scale 1: no unconditional branch) returns cond.
    """
    if uncond is None:
        return cond
    guided = uncond + scale * (cond - uncond)
    k = min(filter_k, guided.shape[-1])
    allowed = torch.zeros_like(cond, dtype=torch.bool).scatter_(-1, guided.topk(k, dim=-1).indices, True)
    return cond.masked_fill(~allowed, float("-inf"))


def guided_sample(
    logits: Tensor,
    config: SamplingConfig,
    cfg_scale: float,
    filter_k: int,
    generator: torch.Generator | None = None,
    banned: Tensor | None = None,
) -> Tensor:
    """Sample one token per row from branch logits [branches, V] (branch 0 conditional,
    branch 1 unconditional when present). `banned` (long ids, on the logits' device) are never
    drawn. Returns [] (0-dim)."""
    if banned is not None:
        # A finite floor, not -inf: CFG subtracts the branches, and -inf - -inf would be NaN.
        logits = logits.index_fill(-1, banned, torch.finfo(logits.dtype).min)
    uncond = logits[1] if logits.shape[0] > 1 else None
    return sample(guide(logits[0], uncond, cfg_scale, filter_k), config, generator)
