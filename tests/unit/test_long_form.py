"""Scripts longer than one generation (dia2.generation.long_form): spoken whole, in order, in
parts that each start from the end of the previous part's audio, the same alone and in the engine."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from dia2 import Dia2, GenerationConfig
from dia2.model.config import FRAME_RATE
from dia2.serving.engine import Engine, EngineConfig, Request
from dia2.text.script import ScriptError

CONTEXT = 80  # frames: the script below needs about four times that
SCRIPT = (
    "[S1] " + " ".join(f"Sentence number {i} is here." for i in range(6))
    + " [S2] " + " ".join(f"Reply {i} comes now!" for i in range(5))
)
WORDS = SCRIPT.replace("[S1] ", "").replace("[S2] ", "").split()


@pytest.fixture(scope="module")
def short_tts(tiny_tts) -> Dia2:
    """The tiny model with a context of CONTEXT frames."""
    model = copy.deepcopy(tiny_tts.model)
    cfg = model.config
    model.config = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, max_context_steps=CONTEXT))
    return Dia2(model, tiny_tts.tokenizer, tiny_tts.codec)


@pytest.fixture
def plans(short_tts, monkeypatch) -> list:
    """Every utterance plan made, in order (each part's voice prefix)."""
    made = []
    original = short_tts.plan

    def spy(entries, config, voice, feed):
        plan = original(entries, config, voice, feed)
        made.append((voice, plan))
        return plan

    monkeypatch.setattr(short_tts, "plan", spy)
    return made


@pytest.fixture
def draws(monkeypatch) -> list[tuple[int, int]]:
    """Every (seed, noise counter) a sampling draw used, in order: alone or in the engine, every
    draw's noise is keyed by `sampling.noise_key` (one draw at a time, or a frame's codebooks at once)."""
    from dia2.generation import sampling

    made = []
    original = sampling.noise_key

    def spy(seed, counter):
        seeds, counters = torch.broadcast_tensors(seed, counter)
        made.extend(zip(seeds.flatten().tolist(), counters.flatten().tolist()))
        return original(seed, counter)

    monkeypatch.setattr(sampling, "noise_key", spy)
    return made


def _prefix_frames(voice) -> int:
    return voice.codes.shape[-1] if voice is not None else 0


def assert_fresh_draws_across_parts(draws: list[tuple[int, int]], seed: int, prefixes: list[int]) -> None:
    """The draws of the script spoken with `seed`, in parts whose voice prefixes have `prefixes`
    frames, are keyed by the frame counted across parts: no (seed, counter) is drawn twice, and
    part p+1's first draw is at the frame after part p's last column and its own prefix."""
    from dia2.generation.sampling import STREAMS

    counters = [c for s, c in draws if s == seed]
    assert len(counters) == len(set(counters)), "a part replays the random draws of an earlier one"
    frames = {stream: [c // STREAMS for c in counters if c % STREAMS == stream] for stream in range(STREAMS)}
    action = frames.pop(0)
    assert all(f == action for f in frames.values() if f), "each codebook draws at the action's frames"
    runs = [[action[0]]]
    for frame in action[1:]:
        if frame == runs[-1][-1] + 1:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    assert len(runs) == len(prefixes) > 1, (len(runs), prefixes)
    assert runs[0][0] == max(1, prefixes[0])  # column 0 is the bos column (or the prefix ends there)
    # A part's columns are its prefix, then its frames: part p+1 counts on from part p's last.
    assert [run[0] - previous[-1] for previous, run in zip(runs, runs[1:])] == [p + 1 for p in prefixes[1:]]


def test_a_long_script_comes_out_whole_in_order_with_fresh_draws_per_part(short_tts, plans, draws):
    config = GenerationConfig(seed=3)
    assert config.text.temperature > 0 and config.audio.temperature > 0  # sampled, not greedy
    result = short_tts.generate(SCRIPT, config)
    assert len(plans) >= 4, "the script should need several parts"
    assert_fresh_draws_across_parts(draws, 3, [_prefix_frames(voice) for voice, _ in plans])
    assert [w for w, _ in result.timestamps] == WORDS
    times = [t for _, t in result.timestamps]
    assert times == sorted(times) and times[-1] < result.duration
    assert not result.truncated
    assert result.audio_tokens.shape[1] > 3 * CONTEXT
    assert len(result.waveform) == result.audio_tokens.shape[1] * short_tts.codec.samples_per_frame


def test_each_part_starts_from_the_end_of_the_previous_one(short_tts, plans, prefix_rules):
    result = short_tts.generate(SCRIPT, GenerationConfig(seed=4))
    # Each part's prefix (the previous part's tail) is aligned by the published prefix rule, as a
    # user's voice is; the training rule is never used (prefix_rules fails the test if it is).
    assert prefix_rules == [list(voice.words) for voice, _ in plans[1:]]
    codes, words = result.audio_tokens, result.timestamps
    first_voice, _ = plans[0]
    assert first_voice is None
    spoken = 0  # frames before the current part
    for (voice, plan), (next_voice, _) in zip(plans, plans[1:]):
        spoken_words = [w for w in words if w[1] * FRAME_RATE >= spoken - 1e-6]
        part_frames = _part_frames(plans, voice, plan, codes, spoken)
        end = spoken + part_frames
        tail = next_voice.codes.shape[-1]
        # The next part's prefix is exactly the last frames of this part's audio...
        assert 0 < tail <= end - spoken and torch.equal(next_voice.codes, codes[:, end - tail : end])
        # ...with the words spoken there, at the same times, from the first word inside it.
        start = (end - tail) / FRAME_RATE
        inside = [(w, round(t - start, 6)) for w, t in spoken_words if start - 1e-6 <= t < end / FRAME_RATE - 1e-6]
        assert [(w.text, round(w.start, 6)) for w in next_voice.words] == inside
        assert abs(next_voice.words[0].start) < 1e-9
        spoken = end


def _part_frames(plans, voice, plan, codes, spoken) -> int:
    """Frames a part produced: up to where the next part's words begin (found from its tail)."""
    index = [p for _, p in plans].index(plan)
    next_voice = plans[index + 1][0]
    tail = next_voice.codes.shape[-1]
    for end in range(spoken + tail, codes.shape[1] + 1):
        if torch.equal(codes[:, end - tail : end], next_voice.codes):
            return end - spoken
    raise AssertionError("the next part's prefix is not in the audio")


def test_streamed_parts_join_without_a_gap_or_a_click(short_tts):
    chunks = list(short_tts.stream(SCRIPT, GenerationConfig(seed=5)))
    codes = torch.cat([c.codes for c in chunks], dim=1)
    streamed = np.concatenate([c.waveform for c in chunks])
    whole = short_tts.codec.decode(codes.unsqueeze(0))[0].float().clamp(-1, 1).numpy()
    # One streaming decoder across the joins: the audio is the one-shot decode of all frames.
    assert streamed.shape == whole.shape == (codes.shape[1] * short_tts.codec.samples_per_frame,)
    assert np.abs(streamed - whole).max() < 1e-4
    assert [w for c in chunks for w, _ in c.words] == WORDS
    assert chunks[-1].done and not any(c.done for c in chunks[:-1])


def test_the_engine_speaks_a_long_script_as_alone_with_fresh_draws_per_part(short_tts, plans, draws):
    config = GenerationConfig(seed=6)
    alone = short_tts.generate(SCRIPT, config)
    draws.clear()
    plans.clear()
    engine = Engine(short_tts, EngineConfig(slots=2))
    other = engine.submit(Request("[S2] Something short meanwhile.", GenerationConfig(seed=1)))
    engine.step()
    long = engine.submit(Request(SCRIPT, config))
    got = long.result()
    assert torch.equal(got.audio_tokens, alone.audio_tokens)
    assert got.timestamps == alone.timestamps
    assert other.result().audio_tokens.shape[1] > 0
    # The engine keys each part's draws itself (by the frame counted across parts), not `Dia2`.
    assert_fresh_draws_across_parts(draws, 6, [_prefix_frames(voice) for voice, plan in plans if plan.config.seed == 6])


def test_part_words_sets_the_cut(short_tts, plans):
    short_tts.generate(SCRIPT, GenerationConfig(seed=7, part_words=8))
    # Six 5-word sentences alone; then the 4-word replies two by two: 4 + 4, 4 + 4, 4.
    assert len(plans) == 9


def test_parts_too_long_for_the_frame_limit_are_refused(short_tts):
    with pytest.raises(ScriptError, match="lower part_words"):
        short_tts.generate(SCRIPT, GenerationConfig(seed=7, part_words=20))
