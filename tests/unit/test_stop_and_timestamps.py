"""Exact frame bookkeeping of generation: where it stops, what audio it returns, when words start.

The actions are forced (a FrameKernels whose action is a fixed policy), so every word's new_word
step follows by hand from the script's token counts and the spec's pacing rules (section 5);
the numbers below are written from the spec, not read back from the code under test:
- generation runs max(delay) + max_padding columns past end_step (spec section 6), so the last
  column is end_step + max(delay) + 6 and the audio has last + 1 - max(delay) frames;
- a word whose new_word step is s starts at audio frame s + 1 - 3 (the alignment rule
  new_word_step = start_frame - 1 + 3, read backwards), reported at that frame / 12.5 s.
"""

import numpy as np
import pytest
import torch

from dia2.generation.config import GenerationConfig
from dia2.generation.kernels import FrameKernels
from dia2.generation.prefix import VoicePrefix, prefix_plan
from dia2.generation.tts import Dia2
from dia2.text.align import prefix_alignment
from dia2.text.state_machine import last_column
from dia2.text.utterance import align_prefix, align_utterance
from dia2.text.words import SpokenWord
from tests.helpers.kernels import ALWAYS, NEVER, SPEC_MAX_PADDING, ForcedActions, expected_steps

SPEC_STEP_OFFSET = 3  # new_word_step = start_frame - 1 + 3 (spec section 6, alignment rule)
FRAME_SECONDS = 1 / 12.5
SAMPLES_PER_FRAME = 1920

SCRIPT = "[S1] Hello there, how are you? [S2] I am doing well. <break time=\"0.4s\"/> [S1] Good."
SHORT_SCRIPT = "[S1] Hello there, how are you?"


def forced_tts(tiny_tts: Dia2, policy: str) -> tuple[Dia2, list[ForcedActions]]:
    """A `Dia2` over the tiny model whose actions follow `policy`, and its kernels once built."""
    built: list[ForcedActions] = []

    def wrap(kernels: FrameKernels) -> FrameKernels:
        built.append(ForcedActions(kernels, policy))
        return built[-1]

    return Dia2(tiny_tts.model, tiny_tts.tokenizer, tiny_tts.codec, kernel_wrapper=wrap), built



def max_delay(tts: Dia2) -> int:
    return max(tts.model.config.data.delays)


@pytest.mark.parametrize("policy,script", [(ALWAYS, SCRIPT), (NEVER, SHORT_SCRIPT)])
def test_last_column_and_audio_length_follow_the_stop_rule_exactly(tiny_tts, policy, script):
    tts, kernels = forced_tts(tiny_tts, policy)
    _, end_step = expected_steps(tts.parse(script), policy, initial_padding=2)
    last = end_step + max_delay(tts) + SPEC_MAX_PADDING
    result = tts.generate(script, GenerationConfig(seed=0))
    assert kernels[0].generated_columns == last  # columns 1..last, after the prefilled column 0
    assert last_column(end_step, max_delay(tts), SPEC_MAX_PADDING) == last
    frames = last + 1 - max_delay(tts)
    assert not result.truncated
    assert result.audio_tokens.shape == (tts.model.config.num_codebooks, frames)
    assert result.waveform.shape == (frames * SAMPLES_PER_FRAME,)


def test_streaming_stops_at_the_same_column(tiny_tts):
    tts, kernels = forced_tts(tiny_tts, ALWAYS)
    _, end_step = expected_steps(tts.parse(SCRIPT), ALWAYS, initial_padding=2)
    last = end_step + max_delay(tts) + SPEC_MAX_PADDING
    chunks = list(tts.stream(SCRIPT, GenerationConfig(seed=0)))
    assert kernels[0].generated_columns == last
    assert chunks[-1].done and sum(c.codes.shape[1] for c in chunks) == last + 1 - max_delay(tts)
    assert sum(len(c.waveform) for c in chunks) == (last + 1 - max_delay(tts)) * SAMPLES_PER_FRAME


@pytest.mark.parametrize("policy,script,initial_padding", [(ALWAYS, SCRIPT, 2), (ALWAYS, SCRIPT, 4), (NEVER, SHORT_SCRIPT, 3)])
def test_word_times_are_the_alignment_start_frames(tiny_tts, policy, script, initial_padding):
    tts, _ = forced_tts(tiny_tts, policy)
    entries = tts.parse(script)
    steps, _ = expected_steps(entries, policy, initial_padding)
    result = tts.generate(script, GenerationConfig(seed=0, initial_padding=initial_padding))
    assert [w for w, _ in result.timestamps] == [e.text for e in entries if e.tokens]
    start_frames = [s + 1 - SPEC_STEP_OFFSET for s in steps]
    assert [t for _, t in result.timestamps] == [f / 12.5 for f in start_frames]
    assert start_frames[0] == initial_padding + 1 - SPEC_STEP_OFFSET


def test_word_times_map_back_to_their_steps_through_the_alignment_rule(tiny_tts):
    """Aligning the reported times (with the words' token counts) by the prefix rule, as a long
    script's next part does with them, gives back the steps the words were started at:
    timestamps and alignment are one rule, read in two directions."""
    tts, _ = forced_tts(tiny_tts, ALWAYS)
    entries = [e for e in tts.parse(SHORT_SCRIPT) if e.tokens]
    steps, _ = expected_steps(entries, ALWAYS, initial_padding=3)  # frame 1: the rule's earliest
    result = tts.generate(SHORT_SCRIPT, GenerationConfig(seed=0, initial_padding=3))
    times = [t for _, t in result.timestamps]
    timed = [SpokenWord(e.text, t, t + len(e.tokens) * FRAME_SECONDS) for t, e in zip(times, entries)]
    assert list(prefix_alignment(timed, [len(e.tokens) for e in entries]).new_word_steps) == steps


def _prefix_voice() -> VoicePrefix:
    """Three words starting on exact frames (4, 16, 28) with room for their tokens, in 40 frames."""
    words = (
        SpokenWord("hello", 4 * FRAME_SECONDS, 9 * FRAME_SECONDS, 1),
        SpokenWord("there", 16 * FRAME_SECONDS, 21 * FRAME_SECONDS, 1),
        SpokenWord("you", 28 * FRAME_SECONDS, 32 * FRAME_SECONDS, 2),
    )
    codes = torch.from_numpy(np.random.default_rng(3).integers(0, 2048, (8, 40)))
    return VoicePrefix(codes, words)


def test_prefix_words_round_trip_through_the_alignment(tiny_tts):
    """A voice prefix's words come back at their alignment start frames (include_prefix), which are
    the frames they were heard at; re-aligning the reported times gives the same steps; the
    script's words after the prefix shift by exactly the prefix's frames when it is cropped."""
    voice = _prefix_voice()
    utterance = align_prefix(voice.words, tiny_tts.tokenizer, tiny_tts.ids)
    starts = [w.start_frame for w in utterance.alignment.words]
    assert starts == [round(w.start * 12.5) for w in voice.words] == [4, 16, 28]
    _, prefix = prefix_plan(voice, tiny_tts.tokenizer, tiny_tts.ids)
    word_steps = [f - 1 + SPEC_STEP_OFFSET for f in starts]
    assert set(word_steps) <= set(prefix.new_word_steps)

    tts, _ = forced_tts(tiny_tts, ALWAYS)
    kept = tts.generate("[S1] How are you?", GenerationConfig(seed=0, include_prefix=True), prefix=voice)
    cropped = tts.generate("[S1] How are you?", GenerationConfig(seed=0), prefix=voice)
    assert kept.timestamps[:3] == [(w.text, f / 12.5) for w, f in zip(voice.words, starts)]
    tokens = [len(e.tokens) for e in utterance.entries if e.tokens]
    heard = [SpokenWord(text, t, w.end) for (text, t), w in zip(kept.timestamps, voice.words)]
    assert list(prefix_alignment(heard, tokens).new_word_steps) == word_steps

    P = voice.codes.shape[1]
    assert [w for w, _ in kept.timestamps[3:]] == [w for w, _ in cropped.timestamps] == ["How", "are", "you?"]
    for (_, kept_time), (_, cropped_time) in zip(kept.timestamps[3:], cropped.timestamps):
        assert kept_time == (round(cropped_time * 12.5) + P) / 12.5
    assert kept.audio_tokens.shape[1] == cropped.audio_tokens.shape[1] + P
    assert torch.equal(kept.audio_tokens[:, :P], voice.codes)


def test_training_rows_end_at_the_column_decoding_stops_at(tiny_tts):
    """The training tail derives from the same stop rule: a row's grid ends at column
    end_of_speech + max(delay) + 6, and the shortest audio a row accepts is what fills that column
    with real audio in every codebook (the smallest delay's codebook reads the latest frame)."""
    from dia2.data.teacher import GridError, build_example

    data = tiny_tts.model.config.data
    words = [SpokenWord("hello", 0.32, 0.60, 1), SpokenWord("there", 0.80, 1.10, 1)]
    utterance = align_utterance(words, tiny_tts.tokenizer, tiny_tts.ids)
    eos = utterance.alignment.end_of_speech_step
    stop = eos + max(data.delays) + SPEC_MAX_PADDING
    shortest = stop - min(data.delays) + 1
    codes = torch.from_numpy(np.random.default_rng(0).integers(0, 2048, (data.num_codebooks, shortest + 5)))

    row = build_example(codes[:, :shortest], words, tiny_tts.tokenizer, tiny_tts.ids, data)
    assert row.columns - 1 == stop
    assert not (row.tokens[2:] == data.audio_pad_token_id).any()
    longer = build_example(codes, words, tiny_tts.tokenizer, tiny_tts.ids, data)
    assert torch.equal(longer.tokens, row.tokens)  # audio past the stop column is never used
    with pytest.raises(GridError, match="frames"):
        build_example(codes[:, : shortest - 1], words, tiny_tts.tokenizer, tiny_tts.ids, data)
