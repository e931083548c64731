"""The training signal: weighted, masked cross-entropies over the three output streams.

The decoder output at column t predicts column t+1 (spec section 7):
- action: action_logits[:, t] vs action_target[:, t] (new_word or pad), pad targets weighted
  `action_pad_weight`;
- cb0: cb0_logits[:, t] vs audio_target[:, 0, t];
- depformer: depformer_logits[:, t, s] vs audio_target[:, s+1, t] for stages s = 0..K-2.
Audio targets that are bos or pad (before a codebook's delay, batch padding) are masked out,
and so is a depformer target whose stage input (codebook s of the same column) is: decoding
always feeds a stage a sampled code (`dia2.data.teacher` builds the mask).

total = action_weight * action + audio_weight * audio, where action is the weighted mean CE of
the action targets and audio the weighted mean CE over every audio target, codebook 0 weighing
`cb0_weight` and the others `depformer_weight` each (Moshi's scheme: semantic x100).

Each stream is reduced to four sums (weighted CE, weight, correct, count) so that evaluation
can add them over batches and processes and get exactly the mean over the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dia2.data.teacher import Batch
from dia2.model.network import Dia2Output
from finetune.config import LossSection

STREAMS = ("action", "cb0", "depformer")
CE, WEIGHT, CORRECT, COUNT = range(4)


@dataclass
class LossResult:
    """loss: the scalar to backpropagate; stats [3, 4]: per stream (STREAMS order) the sums of
    weighted CE, weights, correct argmax predictions and targets, detached."""

    loss: Tensor
    stats: Tensor


def training_loss(out: Dia2Output, batch: Batch, weights: LossSection, action_pad_id: int) -> LossResult:
    """Weighted masked loss of a teacher-forced forward pass over `batch` (L columns, K codebooks)."""
    L1 = batch.action_target.shape[-1]  # L - 1 target columns
    action_w = torch.where(batch.action_target == action_pad_id, weights.action_pad_weight, 1.0) * batch.action_mask
    action = _stream_sums(out.action_logits[:, :L1], batch.action_target, action_w)
    cb0 = _stream_sums(out.cb0_logits[:, :L1], batch.audio_target[:, 0], batch.audio_mask[:, 0].float())
    # depformer_logits [B, L-1, K-1, V] vs codebooks 1..K-1 of the next column, [B, K-1, L-1].
    depformer = _stream_sums(
        out.depformer_logits, batch.audio_target[:, 1:].transpose(1, 2), batch.audio_mask[:, 1:].transpose(1, 2).float()
    )
    sums = torch.stack([action, cb0, depformer])
    return LossResult(combine(sums, weights), sums.detach())


def _stream_sums(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """logits [..., V], target [...], weight [...] (0 = masked) -> [4]: CE*w sum, w sum, correct, count.

    Masked targets may be ids outside the logits (depformer logits stop before bos/pad); they are
    replaced by 0 before the CE and weigh nothing.
    """
    mask = weight > 0
    safe = torch.where(mask, target, 0)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), safe.reshape(-1), reduction="none")
    correct = (logits.detach().argmax(-1) == target) & mask
    return torch.stack([(ce * weight.reshape(-1)).sum(), weight.sum(), correct.sum().float(), mask.sum().float()])


def combine(sums: Tensor, weights: LossSection) -> Tensor:
    """The total loss from per-stream sums [3, 4] (see the module docstring)."""
    action = sums[0, CE] / sums[0, WEIGHT].clamp(min=1e-8)
    audio_ce = weights.cb0_weight * sums[1, CE] + weights.depformer_weight * sums[2, CE]
    audio_count = weights.cb0_weight * sums[1, WEIGHT] + weights.depformer_weight * sums[2, WEIGHT]
    return weights.action_weight * action + weights.audio_weight * audio_ce / audio_count.clamp(min=1e-8)


def metrics(sums: Tensor, weights: LossSection) -> dict[str, float]:
    """loss, and per stream loss_<stream> (mean CE, action pad-weighted) and acc_<stream>."""
    sums = sums.detach().double().cpu()
    out = {"loss": float(combine(sums, weights))}
    for i, name in enumerate(STREAMS):
        out[f"loss_{name}"] = float(sums[i, CE] / sums[i, WEIGHT].clamp(min=1e-8))
        out[f"acc_{name}"] = float(sums[i, CORRECT] / sums[i, COUNT].clamp(min=1))
    return out
