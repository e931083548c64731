"""Frame kernels wrapped from outside: torch.compile (any device) and CUDA graphs (CUDA only).

CUDA graphs cannot run here, so the CPU tests check what would be captured: the capture step is
swapped for an eager stand-in with the same binding (a function bound to static input/output
buffers and to one decode state), or torch.cuda's stream/RNG/graph calls are swapped for
recorders that check each one names the model's device.
"""

import copy
from contextlib import contextmanager

import pytest
import torch

from dia2.generation import graphs
from dia2.generation.graphs import CudaGraphKernels, GraphError, kernel_wrapper
from dia2.generation.config import GenerationConfig
from dia2.generation.kernels import FrameKernels
from dia2.generation.tts import Dia2
from tests.helpers.kernels import EagerCapture

SCRIPT = "[S1] Hello there. [S2] Hi!"


def test_no_flags_means_eager():
    assert kernel_wrapper(False, False) is None


def test_cuda_graphs_refuse_a_cpu_model(tiny_tts):
    with pytest.raises(GraphError, match="CUDA device"):
        CudaGraphKernels(FrameKernels(tiny_tts.model, GenerationConfig()))


def test_cuda_graphs_refuse_8bit_layers_with_outlier_columns(tiny_tts):
    pytest.importorskip("bitsandbytes")
    from dia2.model.quant import quantize

    with pytest.raises(GraphError, match=r"outlier threshold 6\.0 .*--low-vram 4bit.*int8_threshold=0\.0"):
        CudaGraphKernels(FrameKernels(quantize(copy.deepcopy(tiny_tts.model), "8bit"), GenerationConfig()))
    # Without outlier columns the 8-bit model is capturable: only the device is left to refuse.
    capturable = quantize(copy.deepcopy(tiny_tts.model), "8bit", int8_threshold=0.0)
    with pytest.raises(GraphError, match="CUDA device"):
        CudaGraphKernels(FrameKernels(capturable, GenerationConfig()))


def test_cli_refuses_8bit_with_cuda_graphs_before_loading():
    from dia2.cli import build_parser, parse_options
    from dia2.errors import Dia2Error

    argv = ["--tiny", "--text", "hi", "--device", "cuda", "--cuda-graph", "--low-vram", "8bit", "out.wav"]
    with pytest.raises(Dia2Error, match="--low-vram 8bit cannot run under --cuda-graph.*--low-vram 4bit"):
        parse_options(build_parser(), argv)
    options = parse_options(build_parser(), [*argv[:-2], "4bit", "out.wav"])  # 4-bit layers have no outlier search
    assert options.model.low_vram == "4bit" and options.run.cuda_graph


@pytest.fixture
def cpu_graphs(monkeypatch):
    """CudaGraphKernels on the CPU: the eager capture stand-in, and no device refusal."""
    EagerCapture.captured = []
    monkeypatch.setattr(graphs, "Captured", EagerCapture)
    monkeypatch.setattr(graphs, "check_capturable", lambda model: None)
    return EagerCapture.captured


def test_kept_kernels_capture_once_per_shape_for_any_seed(cpu_graphs, tiny_tts, tiny_bundle_dir):
    tts = Dia2.from_repo(tiny_bundle_dir, device="cpu", kernel_wrapper=kernel_wrapper(cuda_graph=True))
    eager = {seed: tiny_tts.generate(SCRIPT, GenerationConfig(seed=seed)).audio_tokens for seed in (0, 1)}

    first = tts.generate(SCRIPT, GenerationConfig(seed=0)).audio_tokens
    assert len(cpu_graphs) == 2  # head and audio, captured on the first utterance
    again = tts.generate(SCRIPT, GenerationConfig(seed=0)).audio_tokens
    other = tts.generate(SCRIPT, GenerationConfig(seed=1)).audio_tokens
    assert len(cpu_graphs) == 2, "a second utterance of the same shape must replay, not capture"
    assert torch.equal(first, eager[0]) and torch.equal(again, eager[0]) and torch.equal(other, eager[1])
    assert not torch.equal(eager[0], eager[1]) or eager[0].shape != eager[1].shape

    # Another capacity is another shape; the least recently used shape goes beyond MAX_SHAPES.
    for frames in (300, 400):
        tts.generate(SCRIPT, GenerationConfig(seed=0, max_frames=frames))
    assert len(cpu_graphs) == 6
    assert torch.equal(tts.generate(SCRIPT, GenerationConfig(seed=0)).audio_tokens, eager[0])
    assert len(cpu_graphs) == 8, "the evicted shape is captured again"
    # Another sampling setup is other kernels: captured apart, kept beside the first.
    tts.generate(SCRIPT, GenerationConfig(seed=0, cfg_scale=3.0))
    assert len(cpu_graphs) == 10 and len(tts._wrapped) == 2


def test_unseeded_calls_draw_their_seed_from_torchs_rng(cpu_graphs, tiny_bundle_dir):
    tts = Dia2.from_repo(tiny_bundle_dir, device="cpu", kernel_wrapper=kernel_wrapper(cuda_graph=True))
    torch.manual_seed(5)
    a = tts.generate(SCRIPT, GenerationConfig()).audio_tokens
    torch.manual_seed(5)
    b = tts.generate(SCRIPT, GenerationConfig()).audio_tokens
    c = tts.generate(SCRIPT, GenerationConfig()).audio_tokens
    assert torch.equal(a, b) and not (a.shape == c.shape and torch.equal(a, c))
    assert len(cpu_graphs) == 2


def test_replay_refuses_a_foreign_decode_state(cpu_graphs, tiny_tts):
    kernels = CudaGraphKernels(FrameKernels(tiny_tts.model, GenerationConfig()))
    kernels.new_state(2, 16)
    column = torch.full((2, tiny_tts.model.config.data.channels, 1), 5)
    with pytest.raises(GraphError, match="new_state"):
        kernels.head(column, tiny_tts.model.new_state(2, 16), torch.tensor([0]), torch.tensor([1]))


class _CudaRecorder:
    """Stands in for the torch.cuda calls the capture makes; records the device each one names."""

    def __init__(self) -> None:
        self.devices: list[tuple[str, object]] = []
        self.current: list[object] = []  # the torch.cuda.device contexts entered
        self.replays: list[object] = []  # the current device at each replay
        recorder = self

        class Stream:
            def __init__(self, device=None) -> None:
                recorder.devices.append(("Stream", device))
                self.device = device

            def wait_stream(self, other) -> None:
                pass

        class CUDAGraph:
            def replay(self) -> None:
                recorder.replays.append(recorder.current[-1] if recorder.current else None)

        self.Stream, self.CUDAGraph = Stream, CUDAGraph

    def current_stream(self, device=None):
        self.devices.append(("current_stream", device))
        return self.Stream.__new__(self.Stream)

    @contextmanager
    def device(self, device):
        self.current.append(device)
        yield
        self.current.pop()

    @contextmanager
    def stream(self, stream):
        yield

    @contextmanager
    def graph(self, graph, pool=None, stream=None, **kwargs):
        self.devices.append(("graph capture stream", getattr(stream, "device", None)))
        self.devices.append(("graph under device", self.current[-1] if self.current else None))
        yield


def test_capture_and_replay_name_the_models_device(tiny_tts, monkeypatch):
    """With `cuda:1`, a stream call without a device would use cuda:0's: an empty graph."""
    recorder = _CudaRecorder()
    for name in ("Stream", "CUDAGraph", "current_stream", "device", "stream", "graph"):
        monkeypatch.setattr(torch.cuda, name, getattr(recorder, name))
    monkeypatch.setattr(graphs, "check_capturable", lambda model: None)
    model = tiny_tts.model
    kernels = CudaGraphKernels(FrameKernels(model, GenerationConfig()))
    seed, step = torch.tensor([0]), torch.tensor([1])
    # Room for one column after the prefill: warm-up and capture must not step past it.
    state = kernels.new_state(2, 2)
    model.prefill(torch.full((2, model.config.data.channels, 1), 5), state)
    column = torch.full((2, model.config.data.channels, 1), 5)
    for _ in range(2):  # capture, then replay
        _, hidden, cb0 = kernels.head(column, state, seed, step)
        kernels.audio(hidden, cb0, torch.full((2, 2), 3), state, seed, step)
    assert recorder.devices, "the capture made no torch.cuda calls"
    assert all(device == model.device for _, device in recorder.devices), recorder.devices
    assert {name for name, _ in recorder.devices} >= {"Stream", "current_stream", "graph capture stream", "graph under device"}
    assert recorder.replays == [model.device] * 4  # 2 graphs x 2 calls, each under the model's device


@pytest.mark.slow
def test_torch_compile_gives_the_eager_tokens(tiny_tts, tiny_bundle_dir):
    compiled = Dia2.from_repo(tiny_bundle_dir, device="cpu", kernel_wrapper=kernel_wrapper(compile=True))
    for seed in (0, 1):
        expected = tiny_tts.generate(SCRIPT, GenerationConfig(seed=seed)).audio_tokens
        assert torch.equal(compiled.generate(SCRIPT, GenerationConfig(seed=seed)).audio_tokens, expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_give_the_eager_tokens(tiny_bundle_dir, monkeypatch):
    captures = []
    real = graphs.Captured
    monkeypatch.setattr(graphs, "Captured", lambda *a: captures.append(1) or real(*a))
    eager = Dia2.from_repo(tiny_bundle_dir, device="cuda", dtype=torch.float32)
    graphed = Dia2.from_repo(tiny_bundle_dir, device="cuda", dtype=torch.float32, kernel_wrapper=kernel_wrapper(cuda_graph=True))
    for seed in (0, 1):
        config = GenerationConfig(seed=seed, cfg_scale=2.0)
        a = eager.generate(SCRIPT, config).audio_tokens
        b = graphed.generate(SCRIPT, config).audio_tokens
        c = graphed.generate(SCRIPT, config).audio_tokens  # replays the graphs captured for b
        assert torch.equal(a, b) and torch.equal(b, c)
    assert len(captures) == 2, "graphs must be captured once per shape, not once per utterance"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graphs_on_the_second_device(tiny_bundle_dir):
    eager = Dia2.from_repo(tiny_bundle_dir, device="cuda:1", dtype=torch.float32)
    graphed = Dia2.from_repo(tiny_bundle_dir, device="cuda:1", dtype=torch.float32, kernel_wrapper=kernel_wrapper(cuda_graph=True))
    config = GenerationConfig(seed=0)
    a = eager.generate(SCRIPT, config).audio_tokens
    assert torch.equal(graphed.generate(SCRIPT, config).audio_tokens, a)
    assert torch.equal(graphed.generate(SCRIPT, config).audio_tokens, a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_8bit_without_outlier_columns_runs_in_cuda_graphs(tiny_bundle_dir):
    pytest.importorskip("bitsandbytes")
    from dia2.model.quant import quantize

    base = Dia2.from_repo(tiny_bundle_dir, device="cuda", dtype=torch.float32)
    model = quantize(copy.deepcopy(base.model).cpu(), "8bit", device="cuda", int8_threshold=0.0)
    config = GenerationConfig(seed=0)
    a = Dia2(model, base.tokenizer, base.codec).generate(SCRIPT, config).audio_tokens
    graphed = Dia2(model, base.tokenizer, base.codec, kernel_wrapper(cuda_graph=True))
    assert torch.equal(graphed.generate(SCRIPT, config).audio_tokens, a)
    assert torch.equal(graphed.generate(SCRIPT, config).audio_tokens, a)
