"""The serving engine's compiled frames (`EngineConfig.torch_compile`): one compiled graph serves
every batch, so requests join and leave without a recompile, and each request still gets the
tokens it gets alone.

The fast tests compile with dynamo's "eager" backend: the same tracing, guards and dynamic
dimensions as inductor (a recompile is dynamo's decision), without minutes of code generation.
The slow test runs inductor itself.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from dia2.generation.graphs import CompiledBatchKernels
from dia2.serving import executor
from dia2.serving.engine import Engine, EngineConfig
from tests.helpers.engine import CASES, adapter_dirs, make_request, own_tts, run_engine, solo_tokens, solo_with_adapter  # noqa: F401


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process (a recompile adds one)."""
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def traced_only(monkeypatch, fresh_dynamo):
    monkeypatch.setattr(executor, "CompiledBatchKernels", functools.partial(CompiledBatchKernels, backend="eager"))


def _join_and_leave(engine: Engine, cases: list) -> tuple[list, int, int]:
    """One request warms the engine up (the first frames compile); the others join one a frame
    (a CFG-less one, a greedy one, streamed text), and all run to the end, leaving one by one.
    Returns the handles and the compiled graphs after the warm-up and at the end."""
    handles = [engine.submit(make_request(*cases[0]))]
    for _ in range(3):
        engine.step()
    warm = compiled_graphs()
    for case in cases[1:]:
        handles.append(engine.submit(make_request(*case)))
        engine.step()
    run_engine(engine)
    return handles, warm, compiled_graphs()


def test_requests_join_and_leave_a_compiled_engine_without_recompiling(tiny_tts, traced_only):
    engine = Engine(tiny_tts, EngineConfig(slots=3, torch_compile=True))
    assert isinstance(engine.executor.kernels, CompiledBatchKernels)
    before = compiled_graphs()
    handles, warm, end = _join_and_leave(engine, CASES[:4])
    assert warm - before == 2, "the warm-up compiles the two frame functions, once each"
    assert end == warm, f"requests joining and leaving recompiled {end - warm} time(s)"
    for handle, case in zip(handles, CASES[:4]):
        assert torch.equal(handle.result().audio_tokens, solo_tokens(tiny_tts, *case)), case[0]


def test_a_compiled_engine_serves_adapters_eager_then_the_base_as_before(own_tts, adapter_dirs, traced_only):
    engine = Engine(own_tts, EngineConfig(slots=2, torch_compile=True))
    plain = engine.submit(make_request(*CASES[0]))
    run_engine(engine)
    plain = plain.result().audio_tokens
    assert torch.equal(plain, solo_tokens(own_tts, *CASES[0]))
    compiled = compiled_graphs()
    engine.load_adapter("a", adapter_dirs["a"])
    voiced = engine.submit(make_request(*CASES[2], adapter="a"))
    run_engine(engine)
    assert compiled_graphs() == compiled, "frames with adapters loaded run eager"
    assert torch.equal(voiced.result().audio_tokens, solo_with_adapter(own_tts, adapter_dirs["a"], CASES[2]))
    engine.unload_adapter("a")
    again = engine.submit(make_request(*CASES[0]))
    run_engine(engine)
    assert torch.equal(again.result().audio_tokens, plain)
    assert compiled_graphs() == compiled, "the base's frames compiled again after an adapter came and went"


@pytest.mark.slow
def test_the_inductor_compiled_engine_gives_the_eager_tokens_and_never_recompiles(tiny_tts, fresh_dynamo):
    handles, warm, end = _join_and_leave(Engine(tiny_tts, EngineConfig(slots=3, torch_compile=True)), CASES[:4])
    assert end == warm, f"requests joining and leaving recompiled {end - warm} time(s)"
    eager, _, _ = _join_and_leave(Engine(tiny_tts, EngineConfig(slots=3)), CASES[:4])
    for compiled_handle, eager_handle in zip(handles, eager):
        assert torch.equal(compiled_handle.result().audio_tokens, eager_handle.result().audio_tokens)
