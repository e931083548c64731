"""The serving engine (dia2.serving.engine): many requests in one batched frame loop, each
giving exactly the tokens it gives alone."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from dia2 import GenerationConfig, VoicePrefix
from dia2.generation.prefix import PrefixError
from dia2.model.adapters import AdapterError
from dia2.model.layers import CAN_PACK, Linear
from dia2.serving.engine import Engine, EngineConfig, EngineError, EngineFull, Request
from dia2.text.script import ScriptError
from dia2.text.words import SpokenWord
from tests.helpers.adapters import save_language_adapter, save_random_adapter, tiny_model_config
from tests.helpers.engine import (  # noqa: F401  (adapter_dirs, own_tts: fixtures)
    CASES,
    adapter_dirs,
    make_request,
    own_tts,
    run_engine,
    solo_tokens,
    solo_with_adapter,
    spoken_pieces,
)
from tests.helpers.kernels import EagerCapture

def test_overlapping_requests_equal_their_solo_runs(tiny_tts):
    solo = [solo_tokens(tiny_tts, *case) for case in CASES]
    engine = Engine(tiny_tts, EngineConfig(slots=4))
    handles = []
    # Requests join at different frames; more requests than slots, so two wait in the queue.
    for i, case in enumerate(CASES):
        handles.append(engine.submit(make_request(*case)))
        for _ in range(i % 3 * 2):
            engine.step()
    run_engine(engine)
    for case, handle, expected in zip(CASES, handles, solo):
        got = handle.result().audio_tokens
        assert got.shape == expected.shape and torch.equal(got, expected), case[0]
    assert engine.busy_slots == 0 and engine.queued == 0


def test_an_engine_on_a_cpu_multiplies_by_packed_weights_unless_told_not_to(own_tts):
    linears = [m for m in own_tts.model.modules() if isinstance(m, Linear)]
    Engine(own_tts, EngineConfig(slots=2, packed_weights=False))
    assert linears and not any(m.packed for m in linears)
    engine = Engine(own_tts, EngineConfig(slots=2))
    assert all(m.packed for m in linears) == CAN_PACK
    # A request among others draws what it draws alone on the same (packed) weights.
    handles = [engine.submit(make_request(*case)) for case in CASES[:2]]
    run_engine(engine)
    for case, handle in zip(CASES[:2], handles):
        assert torch.equal(handle.result().audio_tokens, solo_tokens(own_tts, *case)), case[0]


def test_result_matches_generate_words_and_audio(tiny_tts):
    script, config = "[S1] Hello there. [S2] Hi, you.", GenerationConfig(seed=11)
    alone = tiny_tts.generate(script, config)
    engine = Engine(tiny_tts, EngineConfig(slots=2))
    other = engine.submit(Request("[S2] Something else entirely.", GenerationConfig(seed=3)))
    engine.step()
    got = engine.submit(Request(script, config)).result()
    assert [w for w, _ in got.timestamps] == [w for w, _ in alone.timestamps] == ["Hello", "there.", "Hi,", "you."]
    assert got.timestamps == alone.timestamps
    assert got.waveform.shape == alone.waveform.shape
    assert abs(got.waveform - alone.waveform).max() < 1e-5
    other.result()


def test_cancel_frees_the_slot_and_others_go_on(tiny_tts):
    keep_case = CASES[0]
    expected = solo_tokens(tiny_tts, *keep_case)
    engine = Engine(tiny_tts, EngineConfig(slots=2))
    keep = engine.submit(make_request(*keep_case))
    drop = engine.submit(Request("[S2] This one is cancelled halfway through a long sentence.", GenerationConfig(seed=9)))
    for _ in range(6):
        engine.step()
    assert engine.busy_slots == 2
    drop.cancel()
    engine.step()
    assert engine.busy_slots == 1 and drop.finished.is_set()
    # The freed slot is taken at once by a new request.
    late = engine.submit(Request("[S1] Late.", GenerationConfig(seed=2)), wait=False)
    run_engine(engine)
    assert torch.equal(keep.result().audio_tokens, expected)
    assert list(drop.updates())  # the frames before the cancel, then the stream ends quietly
    assert late.result().audio_tokens.shape[1] > 0


def test_a_queued_request_can_be_cancelled(tiny_tts):
    engine = Engine(tiny_tts, EngineConfig(slots=1))
    first = engine.submit(Request("[S1] First.", GenerationConfig(seed=1)))
    queued = engine.submit(Request("[S1] Second.", GenerationConfig(seed=1)))
    queued.cancel()
    run_engine(engine)
    assert list(queued.updates()) == [] and first.result().audio_tokens.shape[1] > 0


def test_queued_never_exceeds_max_queued_and_a_cancelled_request_leaves_the_queue_at_once(tiny_tts):
    engine = Engine(tiny_tts, EngineConfig(slots=2, max_queued=3))  # no thread, no frame runs
    handles = [engine.submit(Request("[S1] Hi.", GenerationConfig(seed=i))) for i in range(5)]
    # Two of the five take the free slots at the next frame: three wait, as many as may.
    assert (engine.queued, engine.busy_slots) == (3, 0)
    with pytest.raises(EngineFull):
        engine.submit(Request("[S1] One too many.", GenerationConfig(seed=9)))
    handles[4].cancel()
    assert engine.queued == 2 and handles[4].finished.is_set() and list(handles[4].updates()) == []
    engine.submit(Request("[S1] In its place.", GenerationConfig(seed=9)))  # the place is free before any frame
    assert engine.queued == 3


def test_a_handle_is_awaited_from_an_event_loop(tiny_tts):
    script, config = "[S1] Hello there, how are you?", GenerationConfig(seed=1)
    expected = tiny_tts.generate(script, config).audio_tokens
    engine = Engine(tiny_tts, EngineConfig(slots=2)).start()

    async def read(handle):
        return [update async for batch in handle.batches() for update in batch]

    async def both():
        whole = engine.submit(Request(script, config))
        cut = engine.submit(Request("[S2] This one is cancelled after its first audio.", GenerationConfig(seed=2)))
        reading = asyncio.ensure_future(read(whole))
        first = await anext(cut.batches())
        cut.cancel()
        rest = await read(cut)  # ends quietly at the cancel
        failing = engine.submit(Request("[S3] nobody", config))
        with pytest.raises(ScriptError):
            await read(failing)
        return await reading, first, rest

    try:
        updates, first, rest = asyncio.run(both())
    finally:
        engine.stop()
    assert updates[-1].done and torch.equal(torch.cat([u.frames for u in updates], dim=1).cpu(), expected)
    assert first and not any(u.done for u in first + rest)


def test_a_full_engine_refuses_or_queues(tiny_tts):
    engine = Engine(tiny_tts, EngineConfig(slots=1, max_queued=1))
    engine.submit(Request("[S1] One.", GenerationConfig(seed=1)), wait=False)
    with pytest.raises(EngineFull, match="all 1 slots are busy.*wait=True to queue"):
        engine.submit(Request("[S1] Two.", GenerationConfig(seed=1)), wait=False)
    queued = engine.submit(Request("[S1] Two.", GenerationConfig(seed=1)))
    with pytest.raises(EngineFull, match="1 requests are queued .*max_queued = 1"):
        engine.submit(Request("[S1] Three.", GenerationConfig(seed=1)))
    run_engine(engine)
    assert queued.result().audio_tokens.shape[1] > 0


def test_a_failing_request_fails_alone(tiny_tts):
    case = CASES[1]
    expected = solo_tokens(tiny_tts, *case)
    engine = Engine(tiny_tts, EngineConfig(slots=4))
    good = engine.submit(make_request(*case))
    wrong_codec = VoicePrefix(torch.zeros(4, 10, dtype=torch.long), (SpokenWord("hi", 0.1, 0.3, 1),))
    bad_voice = engine.submit(Request("[S1] Hello.", GenerationConfig(seed=1), wrong_codec))
    bad_script = engine.submit(Request("[S1] Hello [S3] there.", GenerationConfig(seed=1)))
    bad_stream = engine.submit(Request(iter(["[S1] Hello", " there", " <break time=\"x\"/>"]), GenerationConfig(seed=1)))
    with pytest.raises(AdapterError, match="no adapter named 'nope' is loaded"):
        engine.submit(Request("[S1] Hello.", GenerationConfig(seed=1), adapter="nope"))
    run_engine(engine)
    assert torch.equal(good.result().audio_tokens, expected)
    with pytest.raises(PrefixError, match="codebooks"):
        bad_voice.result()
    with pytest.raises(ScriptError, match="S3"):
        bad_script.result()
    with pytest.raises(ScriptError):
        bad_stream.result()


def test_a_failing_batched_step_fails_its_batch_and_the_queue_goes_on(tiny_tts, monkeypatch):
    expected = solo_tokens(tiny_tts, *CASES[0])
    engine = Engine(tiny_tts, EngineConfig(slots=2))
    batch = [engine.submit(Request(f"[S{i}] In the batch.", GenerationConfig(seed=i))) for i in (1, 2)]
    queued = engine.submit(make_request(*CASES[0]))
    real, failed = tiny_tts.model.depformer_step, []

    def depformer_step(*args, **kwargs):  # the first batched audio pass fails, as a device error would
        if not failed:
            failed.append(True)
            raise RuntimeError("the device fell over")
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_tts.model, "depformer_step", depformer_step)
    run_engine(engine)
    for handle in batch:
        with pytest.raises(RuntimeError, match="the device fell over"):
            handle.result()
    assert torch.equal(queued.result().audio_tokens, expected)


def test_a_voice_longer_than_a_slot_is_refused(tiny_tts):
    with pytest.raises(EngineError, match="max_prefix_frames is 8, .* raise it to at least"):
        Engine(tiny_tts, EngineConfig(slots=1, max_prefix_frames=8))
    engine = Engine(tiny_tts, EngineConfig(slots=1))
    g = torch.Generator().manual_seed(5)
    long_voice = VoicePrefix(torch.randint(0, 2048, (8, 300), generator=g), (SpokenWord("hello", 0.1, 0.5, 1),))
    handle = engine.submit(Request("[S1] Hi.", GenerationConfig(seed=1), long_voice))
    with pytest.raises(EngineError, match="a slot holds 1750: .*max_prefix_frames"):
        handle.result()


def test_engine_thread_streams_chunks_to_concurrent_clients(tiny_tts):
    cases = CASES[:3]
    expected = [solo_tokens(tiny_tts, *case) for case in cases]
    results: dict[int, torch.Tensor] = {}
    with Engine(tiny_tts, EngineConfig(slots=2)) as engine:

        def client(i: int) -> None:
            chunks = list(engine.submit(make_request(*cases[i])))
            assert chunks[-1].done and all(c.waveform.ndim == 1 for c in chunks)
            results[i] = torch.cat([c.codes for c in chunks], dim=1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(cases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    for i, want in enumerate(expected):
        assert torch.equal(results[i], want)


def test_streamed_text_that_pauses_holds_its_row_while_others_go_on(tiny_tts):
    script, config = "[S1] Wait for the rest of it.", GenerationConfig(seed=8)
    expected = solo_tokens(tiny_tts, script, config, None, True)
    gate = threading.Event()

    def pieces():
        words = spoken_pieces(script)
        yield from words[:3]
        gate.wait(timeout=60)
        yield from words[3:]

    engine = Engine(tiny_tts, EngineConfig(slots=2))
    slow = engine.submit(Request(pieces(), config))
    other = engine.submit(Request("[S2] Meanwhile I keep talking for a while.", GenerationConfig(seed=1)))
    while not other.finished.is_set():
        engine.step()
    gate.set()
    run_engine(engine)
    assert torch.equal(slow.result().audio_tokens, expected)


def test_a_handle_meets_the_engine_at_its_channel_and_imports_no_engine():
    """requests.py (what a client holds) asks the engine only what `Driver` names: it imports no
    engine module, at the top, for type checking, or inside a function (no hidden cycle)."""
    import ast
    from pathlib import Path

    import dia2.serving.requests as requests

    tree = ast.parse(Path(requests.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "dia2.serving.engine" not in imported


def test_per_row_positions_equal_separate_rows(tiny_tts):
    """The batched decoder step, rows at different columns, equals each row run alone."""
    model = tiny_tts.model
    C = model.config.data.channels
    g = torch.Generator().manual_seed(0)
    lengths = [3, 7, 1]
    grids = [torch.randint(0, 1000, (1, C, n + 1), generator=g) for n in lengths]
    alone = []
    with torch.inference_mode():
        for grid, n in zip(grids, lengths):
            state = model.new_state(1, 16)
            model.prefill(grid[..., :n], state)
            alone.append(model.step(grid[..., n:], state).cb0_logits[0, -1])
        batch = model.new_state(3, 16)
        batch.position = torch.zeros(3, dtype=torch.long)
        for row, (grid, n) in enumerate(zip(grids, lengths)):
            model.prefill(grid[..., :n], batch.rows(row, row + 1, 0))
        assert batch.position.tolist() == lengths
        column = torch.cat([grid[..., n:] for grid, n in zip(grids, lengths)])
        out = model.step(column, batch.rows(0, 3, max(lengths)))
    for row in range(3):
        torch.testing.assert_close(out.cb0_logits[row, -1], alone[row], rtol=0, atol=1e-5)


def test_rows_with_different_adapters_equal_each_adapter_alone(own_tts, adapter_dirs):
    plan = [("a", CASES[0]), (None, CASES[1]), ("b", CASES[4]), ("a", CASES[3]), ("b", CASES[2])]
    expected = [solo_with_adapter(own_tts, adapter_dirs[name] if name else None, case) for name, case in plan]
    base = solo_tokens(own_tts, *CASES[0])
    assert not torch.equal(expected[0], base), "the adapter should change the tokens"
    engine = Engine(own_tts, EngineConfig(slots=4))
    engine.load_adapter("a", adapter_dirs["a"])
    engine.load_adapter("b", adapter_dirs["b"])
    handles = []
    for name, case in plan:
        handles.append(engine.submit(make_request(*case, adapter=name)))
        engine.step()
    run_engine(engine)
    for (name, case), handle, want in zip(plan, handles, expected):
        got = handle.result().audio_tokens
        assert got.shape == want.shape and torch.equal(got, want), (name, case[0])


def test_adapters_load_and_unload_while_the_engine_runs(own_tts, adapter_dirs, tmp_path):
    engine = Engine(own_tts, EngineConfig(slots=2)).start()
    try:
        engine.load_adapter("a", adapter_dirs["a"])
        gate = threading.Event()

        def pieces():  # holds `first` in flight until the gate opens
            yield "[S1] A sentence"
            gate.wait(timeout=60)
            yield " that goes on."

        first = engine.submit(Request(pieces(), GenerationConfig(seed=1), adapter="a"))
        engine.load_adapter("b", adapter_dirs["b"])  # while `first` runs
        with pytest.raises(EngineError, match="adapter 'a' is in use by 1 request"):
            engine.unload_adapter("a")
        gate.set()
        second = engine.submit(Request("[S2] Now with b.", GenerationConfig(seed=2), adapter="b"))
        first.result(timeout=120), second.result(timeout=120)
        engine.unload_adapter("a")
        assert engine.adapters == ("b",)
        with pytest.raises(AdapterError, match="no adapter named 'a' is loaded"):
            engine.submit(Request("[S1] Hi.", GenerationConfig(seed=1), adapter="a"))
        other_base = save_random_adapter(tmp_path / "wide", seed=3, cfg=tiny_model_config(n_embd=96), r=4, lora_alpha=8)
        with pytest.raises(AdapterError, match="trained for another base"):
            engine.load_adapter("wide", other_base)
        assert engine.adapters == ("b",)
    finally:
        engine.stop()


@pytest.fixture
def cpu_graphs(monkeypatch):
    """GraphedBatchKernels on the CPU: the eager capture stand-in of test_graphs (a function
    bound to static input and output buffers, replayed by copying inputs in), no device refusal."""
    from dia2.generation import graphs

    EagerCapture.captured = []
    monkeypatch.setattr(graphs, "Captured", EagerCapture)
    monkeypatch.setattr(graphs, "check_capturable", lambda model: None)
    return EagerCapture.captured


def test_graph_mode_runs_every_slot_at_one_shape_with_the_eager_tokens(own_tts, adapter_dirs, cpu_graphs):
    plan = [(None, CASES[0]), (None, CASES[1]), (None, CASES[3]), ("a", CASES[2]), (None, CASES[5])]
    expected = [solo_with_adapter(own_tts, adapter_dirs[name] if name else None, case) for name, case in plan]
    engine = Engine(own_tts, EngineConfig(slots=3, cuda_graph=True))
    handles = [engine.submit(make_request(*case)) for _, case in plan[:3]]
    for _ in range(4):
        engine.step()
    assert len(cpu_graphs) == 2, "head and audio are captured once"
    # Every replay runs all 6 cache rows and all 3 slots, whoever is in them.
    audio, head = cpu_graphs  # a frame samples audio first, then steps the decoder
    assert head.static_inputs[0].shape == (6, own_tts.model.config.data.channels, 1)
    assert audio.static_inputs[0].shape[0] == 6
    assert {t.shape[0] for t in head.static_inputs[1:3]} == {3}  # cond and uncond rows per slot
    engine.load_adapter("a", adapter_dirs["a"])  # new hooks: the graphs are captured again
    handles += [engine.submit(make_request(*case, adapter=name)) for name, case in plan[3:]]
    run_engine(engine)
    assert len(cpu_graphs) == 4
    for (name, case), handle, want in zip(plan, handles, expected):
        got = handle.result().audio_tokens
        assert got.shape == want.shape and torch.equal(got, want), (name, case[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_engine_gives_the_eager_tokens(tiny_bundle_dir):
    from dia2 import Dia2

    tts = Dia2.from_repo(tiny_bundle_dir, device="cuda", dtype=torch.float32)
    results = {}
    for graphed in (False, True):
        engine = Engine(tts, EngineConfig(slots=3, cuda_graph=graphed))
        handles = []
        for case in CASES:
            handles.append(engine.submit(make_request(*case)))
            engine.step()
        run_engine(engine)
        results[graphed] = [h.result().audio_tokens for h in handles]
    for eager, graphed in zip(results[False], results[True]):
        assert torch.equal(eager, graphed)


def test_a_language_adapter_serves_per_row_in_graph_mode(own_tts, adapter_dirs, cpu_graphs, tmp_path):
    """An adapter with trained embedding rows and whole heads (a new language) beside a LoRA voice
    and the base, in one batch of captured steps: each row as it speaks alone; loading and
    unloading it (which re-allocates the bank's row table) recaptures the graphs."""
    ids = sorted({t for case in CASES for t in own_tts.tokenizer.encode(case[0], add_special_tokens=False)})
    language = save_language_adapter(tmp_path / "de", seed=9, indices=ids[::2])
    dirs = {**adapter_dirs, "de": language}
    plan = [("de", CASES[0]), (None, CASES[2]), ("a", CASES[3]), ("de", CASES[4])]
    expected = [solo_with_adapter(own_tts, dirs[name] if name else None, case) for name, case in plan]
    assert not torch.equal(expected[0], solo_tokens(own_tts, *CASES[0])), "the language adapter should change the tokens"
    engine = Engine(own_tts, EngineConfig(slots=3, cuda_graph=True))
    engine.load_adapter("a", dirs["a"])
    engine.load_adapter("de", language)
    handles = [engine.submit(make_request(*case, adapter=name)) for name, case in plan]
    run_engine(engine)
    for (name, case), handle, want in zip(plan, handles, expected):
        got = handle.result().audio_tokens
        assert got.shape == want.shape and torch.equal(got, want), (name, case[0])
    captured = len(cpu_graphs)
    engine.unload_adapter("de")
    handle = engine.submit(make_request(*CASES[3], adapter="a"))
    run_engine(engine)
    assert torch.equal(handle.result().audio_tokens, expected[2]) and len(cpu_graphs) == captured + 2
