"""The invariant training and inference stand on: the teacher-forced forward gives, at every
column, the logits that step-by-step decoding (or prefill + steps) gives over the same inputs."""

import pytest
import torch

from dia2.model.config import parse_config
from dia2.model.network import Dia2Model
from tests.conftest import tiny_raw_config

ATOL = 1e-5

CASES = [
    dict(schedule=[0, 1, 1, 2], text_embedding=True, low_rank_dim=32),
    dict(schedule=[0, 1, 1, 2], text_embedding=False, low_rank_dim=None),
    dict(schedule=[0, 1, 1, 2], text_embedding=True, low_rank_dim=None),
    dict(schedule=[0, 0, 1, 2, 1, 2, 0], text_embedding=False, low_rank_dim=16),
]


def _model_and_tokens(case: dict, batch: int = 2, frames: int = 14, seed: int = 0):
    cfg = parse_config(tiny_raw_config(**case))
    torch.manual_seed(seed)
    model = Dia2Model.from_config(cfg, dtype=torch.float32).eval()
    d = cfg.data
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.empty(batch, d.channels, frames, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, d.text_vocab_size, (batch, 2, frames), generator=g)
    # Exercise the "second stream is pad" branch of the text embedding too.
    tokens[:, 1, ::3] = d.text_pad_token_id
    tokens[:, 2:] = torch.randint(0, d.audio_vocab_size, (batch, d.channels - 2, frames), generator=g)
    return cfg, model, tokens


def _decode(model: Dia2Model, cfg, tokens: torch.Tensor, prefill: int):
    """Decode the grid column by column (after an optional prefill of `prefill` columns)."""
    B, _, T = tokens.shape
    state = model.new_state(B, T)
    actions, cb0s, deps, hiddens = [], [], [], []
    if prefill:
        out = model.prefill(tokens[:, :, :prefill], state)
        actions += out.action_logits.unbind(1)
        cb0s += out.cb0_logits.unbind(1)
        hiddens += out.hidden.unbind(1)
    for t in range(prefill, T):
        out = model.step(tokens[:, :, t : t + 1], state)
        actions.append(out.action_logits[:, 0])
        cb0s.append(out.cb0_logits[:, 0])
        hiddens.append(out.hidden[:, 0])
    for t in range(T - 1):
        nxt = tokens[:, :, t + 1]
        deps.append(
            torch.stack(
                [
                    model.depformer_step(s, hiddens[t], nxt[:, 2 + s], state, text=nxt[:, :2])
                    for s in range(cfg.num_depformer_stages)
                ],
                dim=1,
            )
        )
    assert int(state.position) == T
    return torch.stack(actions, 1), torch.stack(cb0s, 1), torch.stack(deps, 1)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"sched{c['schedule']}-text{c['text_embedding']}-r{c['low_rank_dim']}")
@pytest.mark.parametrize("prefill", [0, 5])
def test_forward_equals_decoding(case, prefill):
    cfg, model, tokens = _model_and_tokens(case)
    with torch.no_grad():
        full = model(tokens)
        action, cb0, dep = _decode(model, cfg, tokens, prefill)
    T = tokens.shape[-1]
    assert full.depformer_logits.shape == (2, T - 1, cfg.num_depformer_stages, cfg.depformer_logit_size)
    torch.testing.assert_close(action, full.action_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(cb0, full.cb0_logits, atol=ATOL, rtol=0)
    for s in range(cfg.num_depformer_stages):
        torch.testing.assert_close(dep[:, :, s], full.depformer_logits[:, :, s], atol=ATOL, rtol=0, msg=f"stage {s}")


def test_logits_depend_on_their_inputs():
    """Guards the parity test against passing vacuously (e.g. logits that ignore the inputs)."""
    cfg, model, tokens = _model_and_tokens(CASES[0])
    with torch.no_grad():
        a = model(tokens)
        changed = tokens.clone()
        changed[:, 2 + 1, 6] = (changed[:, 2 + 1, 6] + 1) % cfg.data.audio_vocab_size  # codebook 1, column 6
        b = model(changed)
    # Causal over columns: nothing before column 6 moves; the decoder output at column 6 does.
    torch.testing.assert_close(a.action_logits[:, :6], b.action_logits[:, :6], atol=0, rtol=0)
    assert (a.cb0_logits[:, 6] - b.cb0_logits[:, 6]).abs().max() > 1e-4
    # Depformer of column 5 predicts column 6: stage 0 only sees codebook 0, stage 1 sees codebook 1.
    torch.testing.assert_close(a.depformer_logits[:, 5, 0], b.depformer_logits[:, 5, 0], atol=0, rtol=0)
    assert (a.depformer_logits[:, 5, 1] - b.depformer_logits[:, 5, 1]).abs().max() > 1e-4


def test_rows_of_a_batch_are_independent():
    cfg, model, tokens = _model_and_tokens(CASES[1], batch=3)
    with torch.no_grad():
        full = model(tokens)
        single = model(tokens[1:2])
    torch.testing.assert_close(full.depformer_logits[1:2], single.depformer_logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(full.cb0_logits[1:2], single.cb0_logits, atol=ATOL, rtol=0)


def test_state_reset_and_capacity():
    cfg, model, tokens = _model_and_tokens(CASES[1], frames=6)
    state = model.new_state(2, 6)
    with torch.no_grad():
        first = model.prefill(tokens, state).cb0_logits
        with pytest.raises(ValueError, match="larger max_frames"):
            model.step(tokens[:, :, :1], state)
        state.reset()
        again = model.prefill(tokens, state).cb0_logits
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg, model, tokens = _model_and_tokens(CASES[0], frames=8)
    model.train()

    def grads():
        model.zero_grad()
        out = model(tokens)
        (out.cb0_logits.logsumexp(-1).mean() + out.depformer_logits.logsumexp(-1).mean()
         + out.action_logits.logsumexp(-1).mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_gradient_checkpointing(True)
    ckpt = grads()
    missing = [n for n, g in plain.items() if g is None or not g.abs().sum() > 0]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("case", CASES[:2] + CASES[3:], ids=["text", "plain", "7-stages"])
def test_a_frames_depformer_inputs_give_every_stage_what_its_hidden_gives(case):
    """`depformer_inputs(hidden)`, made once a frame, stands for `hidden` at every stage, bit for bit."""
    cfg, model, tokens = _model_and_tokens(case)
    B = tokens.shape[0]
    with torch.inference_mode():
        hidden = model.prefill(tokens[:, :, :4], model.new_state(B, 4)).hidden[:, -1]
        inputs = model.depformer_inputs(hidden)
        assert len(inputs) == cfg.num_weight_groups
        nxt = tokens[:, :, 4]
        by_hidden, by_inputs = model.new_state(B, 1), model.new_state(B, 1)
        for s in range(cfg.num_depformer_stages):
            a = model.depformer_step(s, hidden, nxt[:, 2 + s], by_hidden, text=nxt[:, :2])
            b = model.depformer_step(s, inputs, nxt[:, 2 + s], by_inputs, text=nxt[:, :2])
            assert torch.equal(a, b), f"stage {s}"
