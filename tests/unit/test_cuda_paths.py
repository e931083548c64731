"""What the CUDA paths would do, checked on the CPU (issue 16): host syncs per frame, the decode
state's capacity check, the depformer's grouped projections, the cached attention."""

from __future__ import annotations

import contextlib
import numbers

import pytest
import torch
import torch.nn.functional as F

from dia2.generation.config import GenerationConfig
from dia2.model.config import parse_config
from dia2.model.layers import _masked_attention
from dia2.model.network import DecodeCapacityError, Dia2Model
from tests.conftest import random_tokens, tiny_raw_config

# Every way Python code can read a tensor's value on the host: on CUDA each one waits for the
# device (a sync).
HOST_READS = ("item", "tolist", "__int__", "__index__", "__float__", "__bool__")


@contextlib.contextmanager
def counting_host_reads(fail: bool = False):
    """Count (or refuse) host reads of tensor values while the block runs."""
    counts = {"reads": 0}
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name):
        def read(self, *args, **kwargs):
            if fail:
                raise AssertionError(f"host read of a tensor ({name})")
            counts["reads"] += 1
            return originals[name](self, *args, **kwargs)

        return read

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, wrap(name))
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def test_a_frame_reads_the_device_once_and_writes_text_without_scalar_copies(tiny_tts, monkeypatch):
    """The sampled action is the one host sync of a frame; text ids reach the device buffer as
    kernel arguments (fill_), never as a Python scalar assigned to an element (a blocking copy)."""
    loop = tiny_tts._loop(tiny_tts.parse("[S1] Hello there. [S2] Hi!"), GenerationConfig(seed=0, cfg_scale=3.0), None, None)
    scalar_writes = []
    setitem = torch.Tensor.__setitem__

    def recording_setitem(self, key, value):
        if isinstance(value, numbers.Number):
            scalar_writes.append(key)
        return setitem(self, key, value)

    monkeypatch.setattr(torch.Tensor, "__setitem__", recording_setitem)
    with counting_host_reads() as counts:
        updates = list(loop)
    frames = len(updates) - 1  # the first update is the prefill's
    assert frames > 10 and updates[-1].done
    assert scalar_writes == []
    assert counts["reads"] == frames, f"{counts['reads']} host reads for {frames} frames"
    # The text really reached the buffer: the conditional row holds the words' tokens.
    assert (loop.text[0, 0, 1 : loop.last_column + 1] != tiny_tts.ids.pad).sum() > 3


def _model(schedule: list[int] | None = None) -> tuple:
    cfg = parse_config(tiny_raw_config(schedule=schedule))
    torch.manual_seed(0)
    return cfg, Dia2Model.from_config(cfg)


def test_overrunning_a_decode_state_is_refused_before_any_kernel_runs():
    cfg, model = _model()
    tokens = random_tokens(cfg, 1, 5, seed=1)
    state = model.new_state(1, 4)
    with torch.no_grad(), counting_host_reads(fail=True):
        model.prefill(tokens[..., :3], state)
        model.step(tokens[..., 3:4], state)
        cache_before = state.decoder[0].k.clone()
        with pytest.raises(DecodeCapacityError, match=r"holds 4 frames but column 4 .*max_frames=5"):
            model.step(tokens[..., 4:5], state)
        with pytest.raises(DecodeCapacityError, match="column 5"):
            model.prefill(tokens[..., 3:5], state)
    # Nothing ran: the device position and the caches are as the last good step left them.
    assert int(state.position) == 4 and state.filled == 4
    assert torch.equal(state.decoder[0].k, cache_before)
    state.reset()
    assert state.filled == 0 and int(state.position) == 0
    with torch.no_grad():
        model.prefill(tokens[..., :4], state)


def test_grouped_depformer_projections_index_with_cached_device_tensors(monkeypatch):
    """Training's full-sequence depformer gathers each weight group's stages with index tensors
    built once, never with Python lists (a host-to-device copy per forward on CUDA)."""
    cfg, model = _model(schedule=[0, 1, 0, 2, 1, 0])
    model.set_gradient_checkpointing(True)
    model.train()
    groups = model.depformer.group_index
    assert groups.positions == ((0, 2, 5), (1, 4), (3,))
    tokens = random_tokens(cfg, 2, 7, seed=2)
    with torch.inference_mode():  # evaluation may build the cache first: training must still work
        first = groups.tensors(torch.device("cpu"))
    list_keys = []
    getitem = torch.Tensor.__getitem__

    def recording_getitem(self, key):
        parts = key if isinstance(key, tuple) else (key,)
        if any(isinstance(part, list) for part in parts):
            list_keys.append(key)
        return getitem(self, key)

    monkeypatch.setattr(torch.Tensor, "__getitem__", recording_getitem)
    out = model(tokens)
    out.depformer_logits.square().mean().backward()  # the checkpoint recompute indexes again
    assert list_keys == []
    assert groups.tensors(torch.device("cpu"))[1] is first[1]
    assert all(p.grad is not None for p in model.depformer.layers[0].self_attention.in_proj.parameters())


def test_grouped_projection_equals_each_stage_with_its_own_weights():
    from dia2.model.layers import _grouped_linear

    cfg, model = _model(schedule=[0, 1, 0, 2, 1, 0])
    attention = model.depformer.layers[0].self_attention
    x = torch.randn(3, 6, cfg.model.depformer.n_embd)
    with torch.no_grad():
        grouped = _grouped_linear(x, attention.in_proj, model.depformer.group_index)
        per_stage = torch.stack([attention.in_proj[g](x[:, s]) for s, g in enumerate(model.depformer.schedule)], dim=1)
    torch.testing.assert_close(grouped, per_stage, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("T", [1, 5])
def test_cached_attention_folds_query_groups_like_gqa(T):
    """Folding each KV head's query group into the query axis is grouped-query attention:
    query head h reads KV head h // (H / H_kv)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, T, 16, generator=g)
    k, v = torch.randn(2, 2, 12, 16, generator=g), torch.randn(2, 2, 12, 16, generator=g)
    mask = torch.arange(12)[None, :] <= (6 + torch.arange(T))[:, None]
    reference = F.scaled_dot_product_attention(
        q, k.repeat_interleave(4, dim=1), v.repeat_interleave(4, dim=1), attn_mask=mask, scale=1.0
    )
    torch.testing.assert_close(_masked_attention(q, k, v, mask), reference, atol=1e-5, rtol=0)
    # A wrong grouping (head h reading KV head h % H_kv) must not pass the same check.
    wrong = F.scaled_dot_product_attention(q, k.repeat(1, 4, 1, 1), v.repeat(1, 4, 1, 1), attn_mask=mask, scale=1.0)
    assert (wrong - reference).abs().max() > 1e-3


def test_cached_attention_takes_the_non_contiguous_output_of_cudas_fused_kernel(monkeypatch):
    """CUDA's memory-efficient kernel returns its output as a transposed [B, M, H, K] buffer
    (not contiguous); the fold back to [B, H, T, hd] must accept that layout."""
    sdpa = F.scaled_dot_product_attention

    def transposed_like_cuda(*args, **kwargs):
        y = sdpa(*args, **kwargs)
        return y.transpose(1, 2).contiguous().transpose(1, 2)  # same values, CUDA's strides

    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 16, 1, 8, generator=g), torch.randn(1, 8, 4, 8, generator=g), torch.randn(1, 8, 4, 8, generator=g)
    mask = torch.ones(1, 4, dtype=torch.bool)
    expected = _masked_attention(q, k, v, mask)
    monkeypatch.setattr(F, "scaled_dot_product_attention", transposed_like_cuda)
    torch.testing.assert_close(_masked_attention(q, k, v, mask), expected, atol=0, rtol=0)
