"""finetune.losses: the weighted masked cross-entropies, checked against a direct computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from dia2.data.teacher import Batch
from dia2.model.network import Dia2Output
from finetune.config import LossSection
from finetune.losses import combine, metrics, training_loss

B, L, K, V = 2, 6, 3, 2048


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = Dia2Output(
        hidden=torch.zeros(B, L, 4),
        action_logits=torch.randn(B, L, 2, generator=g),
        cb0_logits=torch.randn(B, L, V + 2, generator=g),
        depformer_logits=torch.randn(B, L - 1, K - 1, V, generator=g),
    )
    action = torch.randint(0, 2, (B, L - 1), generator=g)
    audio = torch.randint(0, V, (B, K, L - 1), generator=g)
    action_mask = torch.ones(B, L - 1, dtype=torch.bool)
    action_mask[1, 3:] = False  # row 1 is shorter: batch padding
    audio_mask = action_mask[:, None].expand(B, K, L - 1).clone()
    audio_mask[:, 1:, 0] = False  # before the delay of codebooks 1.. (bos)
    audio[:, 1:, 0] = 2048  # bos: outside the depformer's 2048 logits, must be masked, not indexed
    audio[1, :, 3:] = 2049  # pad
    return out, Batch(torch.zeros(B, K + 2, L, dtype=torch.long), action, action_mask, audio, audio_mask)


def _reference(out, batch, w: LossSection) -> float:
    """The definition, written out target by target."""
    a_num = a_den = audio_num = audio_den = 0.0
    for b in range(B):
        for t in range(L - 1):
            if batch.action_mask[b, t]:
                weight = w.action_pad_weight if batch.action_target[b, t] == 0 else 1.0
                ce = F.cross_entropy(out.action_logits[b, t], batch.action_target[b, t]).item()
                a_num, a_den = a_num + weight * ce, a_den + weight
            for k in range(K):
                if not batch.audio_mask[b, k, t]:
                    continue
                logits = out.cb0_logits[b, t] if k == 0 else out.depformer_logits[b, t, k - 1]
                weight = w.cb0_weight if k == 0 else w.depformer_weight
                audio_num += weight * F.cross_entropy(logits, batch.audio_target[b, k, t]).item()
                audio_den += weight
    return w.action_weight * a_num / a_den + w.audio_weight * audio_num / audio_den


@pytest.mark.parametrize(
    "weights",
    [LossSection(), LossSection(action_weight=2.0, action_pad_weight=1.0, audio_weight=0.5, cb0_weight=1.0, depformer_weight=3.0)],
)
def test_loss_matches_the_definition(weights):
    out, batch = _case()
    result = training_loss(out, batch, weights, action_pad_id=0)
    assert result.loss.item() == pytest.approx(_reference(out, batch, weights), rel=1e-5)
    assert metrics(result.stats, weights)["loss"] == pytest.approx(result.loss.item(), rel=1e-5)


def test_masked_cells_do_not_count():
    out, batch = _case()
    before = training_loss(out, batch, LossSection(), 0).loss
    # Wild logits where targets are masked (padding of row 1, bos cells) change nothing.
    out.cb0_logits[1, 3:] = 1e4 * torch.randn(L - 3, V + 2)
    out.depformer_logits[:, 0] = 1e4
    out.action_logits[1, 4:] = -1e4
    after = training_loss(out, batch, LossSection(), 0).loss
    assert torch.equal(before, after)


def test_per_stream_figures_and_gradients():
    out, batch = _case()
    out.cb0_logits.requires_grad_(True)
    # Make codebook 0 exactly right everywhere: its accuracy is 1 and its loss near 0.
    with torch.no_grad():
        out.cb0_logits[:, : L - 1].scatter_(-1, batch.audio_target[:, 0].clamp(max=V - 1)[..., None], 50.0)
    result = training_loss(out, batch, LossSection(), 0)
    m = metrics(result.stats, LossSection())
    assert m["acc_cb0"] == 1.0 and m["loss_cb0"] < 1e-10
    assert 0 <= m["acc_depformer"] < 0.05 and m["loss_depformer"] == pytest.approx(math.log(V), rel=0.15)
    assert set(m) == {"loss", "loss_action", "acc_action", "loss_cb0", "acc_cb0", "loss_depformer", "acc_depformer"}
    result.loss.backward()
    assert out.cb0_logits.grad[1, 3:].abs().sum() == 0  # padding gets no gradient


def test_sums_add_up_over_batches():
    """Evaluation adds stats over batches: the same total as one batch holding everything."""
    w = LossSection()
    out, batch = _case(1)
    halves = [training_loss(
        Dia2Output(out.hidden[i:i + 1], out.action_logits[i:i + 1], out.cb0_logits[i:i + 1], out.depformer_logits[i:i + 1]),
        Batch(*(t[i:i + 1] for t in (batch.tokens, batch.action_target, batch.action_mask, batch.audio_target, batch.audio_mask))),
        w, 0,
    ).stats for i in range(B)]
    whole = training_loss(out, batch, w, 0)
    assert combine(halves[0] + halves[1], w).item() == pytest.approx(whole.loss.item(), rel=1e-6)
