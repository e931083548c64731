"""`dia2.model.layers.Linear`: nn.Linear with a CPU path for a decoding step's few rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dia2.model.layers import SMALL_BATCH_ROWS, Linear


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
