"""`dia2.model.layers`: the Linear of a decoding step's few rows, attention's joint query/key
norm and rotation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import copy

from dia2.model.layers import (
    CAN_PACK,
    SMALL_BATCH_ROWS,
    Attention,
    KVCache,
    Linear,
    Rotary,
    apply_rotary,
    forget_packed,
    pack_linears,
)


def _layer(bias: bool, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(96, 200, bias=bias)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 96), (2, 96), (2, 1, 96), (3, 96), (4, 1, 96), (2, 2, 96), (5, 96), (8, 1, 96), (3, 7, 96)])
def test_every_row_count_gives_the_products_of_f_linear(shape, bias):
    layer = _layer(bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        out = layer(x)
    assert out.shape == (*shape[:-1], 200)
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    # What a decoder step does next with it: split the heads, view them.
    assert out.reshape(-1, 200)[:, :64].reshape(-1, 4, 16).shape[1:] == (4, 16)


def test_the_few_rows_path_is_the_weight_times_the_rows():
    """A step's 2..SMALL_BATCH_ROWS rows go through weight @ x^T (MKL streams the weight): the
    result is that product's transpose, bit for bit, not F.linear's."""
    layer = _layer(bias=False)
    x = torch.randn(2, 1, 96)
    with torch.no_grad():
        out = layer(x)
    assert torch.equal(out[:, 0], (layer.weight @ x[:, 0].t()).t())
    assert 2 <= SMALL_BATCH_ROWS


def test_a_transposed_input_gives_the_products_of_its_rows():
    """What the few-rows path returns (a transposed view) fed to the next layer."""
    layer = _layer(bias=False)
    x = torch.randn(96, 2).t()
    assert not x.is_contiguous()
    with torch.inference_mode():
        assert torch.equal(layer(x), layer(x.contiguous()))


def test_training_and_wide_inputs_keep_f_linear_exactly():
    layer = _layer(bias=True)
    x = torch.randn(2, 96, requires_grad=True)
    out = layer(x)  # autograd records: the path training has always taken
    assert torch.equal(out, F.linear(x, layer.weight, layer.bias))
    out.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    wide = torch.randn(SMALL_BATCH_ROWS + 1, 96)
    with torch.inference_mode():
        assert torch.equal(layer(wide), F.linear(wide, layer.weight, layer.bias))


def test_it_is_an_nn_linear_with_the_same_state_dict():
    layer = _layer(bias=False)
    plain = nn.Linear(96, 200, bias=False)
    plain.load_state_dict(layer.state_dict())
    assert isinstance(layer, nn.Linear) and list(layer.state_dict()) == ["weight"]
    x = torch.randn(6, 96)
    assert torch.equal(layer(x), plain(x))


def test_rotary_rotates_each_half_pair_by_its_angle():
    """The half-split RoPE of the spec, from scratch: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    rotary = Rotary(8, 1.0, 100.0)
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rotary.span(4, 5, torch.device("cpu"))
    timescale = 1.0 * (100.0 / 1.0) ** (2 * torch.arange(4) / 8)
    angle = torch.arange(4, 9)[:, None] / timescale  # positions 4..8
    x1, x2 = x[..., :4], x[..., 4:]
    expected = torch.cat([x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()], dim=-1)
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected, rtol=1e-5, atol=1e-5)


class _Wrapped(nn.Module):
    """What PEFT's modules_to_save puts in a norm's place: a module that is no RMSNorm."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.inner = norm

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("groups", [None, 2])
def test_query_and_key_norms_run_as_one_and_a_wrapped_norm_is_still_called(groups):
    torch.manual_seed(0)
    attention = Attention(32, 4, 2, 8, 1e-6, groups=groups).eval()
    with torch.no_grad():
        attention.q_norm.weight.uniform_(0.5, 1.5)
        attention.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32)
    cos, sin = Rotary(8, 1.0, 100.0).span(0, 3, torch.device("cpu"))
    group = None if groups is None else 1

    def run():
        cache = KVCache.empty(2, 2, 3, 8, torch.float32, "cpu")
        with torch.inference_mode():
            return attention(x, cos, sin, cache, 0, group)

    joint = run()
    attention.q_norm, attention.k_norm = _Wrapped(attention.q_norm), _Wrapped(attention.k_norm)
    assert torch.equal(run(), joint)  # the wrapped norms, each called on its own heads
    with torch.no_grad():
        attention.k_norm.inner.weight.mul_(2.0)
    assert not torch.allclose(run(), joint)  # ... and what the wrapper holds is what counts


needs_packing = pytest.mark.skipif(not CAN_PACK, reason="this torch has no oneDNN packed linear")


def _packed(bias: bool = False) -> nn.Sequential:
    model = nn.Sequential(_layer(bias), nn.ReLU(), Linear(200, 50, bias=bias))
    assert pack_linears(model) == 2
    return model


@needs_packing
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 17, 64])
def test_packed_weights_give_f_linear_products(rows):
    model = _packed(bias=True)
    first = model[0]
    x = torch.randn(rows, 1, 96)
    with torch.inference_mode():
        torch.testing.assert_close(first(x), F.linear(x, first.weight, first.bias), rtol=1e-5, atol=1e-5)


@needs_packing
def test_a_row_gets_its_own_product_in_any_packed_batch():
    """From 3 rows on (where the packed copy multiplies) a row's result does not depend on the rows
    beside it: within float rounding everywhere (bit for bit on the machines measured, which oneDNN
    does not promise)."""
    first = _packed()[0]
    x = torch.randn(17, 96)
    with torch.inference_mode():
        out = first(x)
        for r in range(17):
            others = torch.randn(2, 96)
            alone = first(torch.cat([others[:1], x[r : r + 1], others[1:]]))[1]
            torch.testing.assert_close(out[r], alone, rtol=1e-6, atol=1e-5)


@needs_packing
def test_packed_weights_follow_the_weights():
    model = _packed()
    layer = model[0]
    x = torch.randn(4, 96)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(2.0)  # through the parameter: its version moves, the copy is made again
        torch.testing.assert_close(layer(x), 2.0 * before, rtol=1e-5, atol=1e-4)
        layer.weight.data.mul_(0.5)  # behind autograd's back (as PEFT merges): only forget_packed sees it
        stale = layer(x)
        forget_packed(model)
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-4)
        assert not torch.allclose(stale, before)
        layer.weight = nn.Parameter(torch.zeros_like(layer.weight))  # a new tensor in its place
        assert layer(x).abs().max() == 0


@needs_packing
def test_a_packed_model_copies_saves_and_unpacks_as_a_plain_one():
    model = _packed()
    x = torch.randn(3, 96)
    with torch.inference_mode():
        packed = model(x)
    twin = copy.deepcopy(model)
    assert list(model.state_dict()) == ["0.weight", "2.weight"]
    with torch.inference_mode():
        assert torch.equal(twin(x), packed)
    trained = model(x.clone().requires_grad_())  # training never takes the packed path
    assert torch.equal(trained, model[2](model[1](F.linear(x, model[0].weight))).detach()) and trained.grad_fn is not None
    assert pack_linears(model, enabled=False) == 0 and not model[0].packed
    with torch.inference_mode():
        torch.testing.assert_close(model(x), packed, rtol=1e-5, atol=1e-5)


@needs_packing
def test_a_compiled_packed_layer_calls_the_packed_op_with_the_weight_itself():
    """Compiled graphs multiply through dia2::packed_linear (inductor alone would use plain mm),
    and since the op gets the weight, the packed copy follows a changed weight there too."""
    torch._dynamo.reset()
    layer = _packed()[0]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(layer, backend=backend, dynamic=True)
    x, pair = torch.randn(5, 96), torch.randn(2, 96)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        layer.weight.mul_(2.0)
        torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)
        compiled(pair)  # a batch of 2 rows: the same graph (no test of the row count)
    torch._dynamo.reset()
    assert len(graphs) == 1
    assert any(n.target is torch.ops.dia2.packed_linear.default for n in graphs[0].graph.nodes)
