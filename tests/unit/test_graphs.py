"""Frame kernels wrapped from outside: torch.compile (any device) and CUDA graphs (CUDA only)."""

import pytest
import torch

from dia2.generation.graphs import CudaGraphKernels, kernel_wrapper
from dia2.generation.loop import GenerationConfig
from dia2.generation.runtime import Dia2

SCRIPT = "[S1] Hello there. [S2] Hi!"


def test_no_flags_means_eager():
    assert kernel_wrapper(False, False) is None


def test_cuda_graphs_refuse_a_cpu_model(tiny_tts):
    from dia2.generation.loop import FrameKernels

    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphKernels(FrameKernels(tiny_tts.model, GenerationConfig(), None))


@pytest.mark.slow
def test_torch_compile_gives_the_eager_tokens(tiny_tts, tiny_bundle_dir):
    compiled = Dia2.from_local(tiny_bundle_dir, device="cpu", kernel_wrapper=kernel_wrapper(compile=True))
    for seed in (0, 1):
        expected = tiny_tts.generate(SCRIPT, GenerationConfig(seed=seed)).audio_tokens
        assert torch.equal(compiled.generate(SCRIPT, GenerationConfig(seed=seed)).audio_tokens, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_give_the_eager_tokens(tiny_bundle_dir):
    eager = Dia2.from_local(tiny_bundle_dir, device="cuda", dtype=torch.float32)
    graphed = Dia2.from_local(tiny_bundle_dir, device="cuda", dtype=torch.float32, kernel_wrapper=kernel_wrapper(cuda_graph=True))
    greedy = GenerationConfig(seed=0, cfg_scale=2.0)
    a = eager.generate(SCRIPT, greedy).audio_tokens
    b = graphed.generate(SCRIPT, greedy).audio_tokens
    c = graphed.generate(SCRIPT, greedy).audio_tokens  # replays the captured graphs
    assert torch.equal(a, b) and torch.equal(b, c)
