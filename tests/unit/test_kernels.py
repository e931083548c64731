"""dia2.generation.kernels: a batched frame's inputs travel to a CUDA graph as a flat tuple of
tensors and come back whole (`FrameInputs.tensors` / `like`, the graph path's binding)."""

import itertools
from dataclasses import dataclass, fields

import pytest
import torch
from torch import Tensor

from dia2.generation.kernels import FrameInputs, Rows
from dia2.generation.sampling import RowSampling


@dataclass(frozen=True)
class _FiveTensors(RowSampling):
    """RowSampling with a fifth per-row tensor, as a new sampling setting would add one."""

    min_p: Tensor


def _inputs(sampling: type[RowSampling]) -> FrameInputs:
    """Inputs whose every tensor holds its own value, with settings of type `sampling`."""
    values = itertools.count()
    tensor = lambda: torch.full((2,), next(values))

    def settings() -> RowSampling:
        per_row = {f.name: tensor() for f in fields(sampling) if f.name != "width"}
        return sampling(**per_row, width=7)

    return FrameInputs(Rows(tensor(), tensor(), tensor()), tensor(), tensor(), tensor(), settings(), settings())


def _leaves(inputs: FrameInputs) -> dict[str, Tensor]:
    """Every tensor of the inputs by its path (`text.top_k`), read field by field."""
    leaves = {}
    for f in fields(inputs):
        value = getattr(inputs, f.name)
        if isinstance(value, Tensor):
            leaves[f.name] = value
        else:
            leaves |= {f"{f.name}.{g.name}": getattr(value, g.name) for g in fields(value) if g.name != "width"}
    return leaves


@pytest.mark.parametrize("sampling", [RowSampling, _FiveTensors], ids=["four sampling tensors", "a fifth one"])
def test_inputs_come_back_whole_from_the_graphs_buffers(sampling):
    inputs = _inputs(sampling)
    flat = inputs.tensors()
    assert len(flat) == len(_leaves(inputs)), "every tensor is a graph input"
    buffers = tuple(x.clone() for x in flat)  # a graph's static inputs: same values, other storage
    back = inputs.like(buffers)
    # Each tensor comes back in its own field, read from the buffer that holds its value.
    for path, value in _leaves(inputs).items():
        got = _leaves(back)[path]
        assert torch.equal(got, value) and any(got is b for b in buffers), path
    assert type(back.text) is sampling and type(back.audio) is sampling
    assert back.text.width == back.audio.width == 7
