"""Train exactly as we infer (spec section 7, last paragraph): the text side of every training row
is a text side inference can produce.

For every row, the state machine in its normal, unforced mode with the `GenerationConfig`
defaults (initial_padding 2, max_padding 6), fed the row's action targets as if the model had
sampled them, must reproduce the row's two text streams column by column; the row's entries must
be exactly those of a script (word entries, `<break time=.../>` entries); and the transcript the
machine keeps must put every word at its aligned step. Checked over every row of every fixture
corpus (data prep on the espeak-ng fixtures: single voices, a stereo dialogue, and a run whose
long pauses stay inside utterances as breaks; the synthetic corpora of the trainer tests), over
hand-built alignments (first word at frame 0, 1, 5; long pauses; long words).

Voice prefixes are the exception, on purpose (issue 29, docs/alignment.md): a prefix is forced,
not generated, so it follows the published runtime's rule (`prefix_alignment`), the only prefix
streams the published model has been conditioned on, and not this invariant. The tests at the
end show that the prefix rule would break it, and that a prefix's forced run starts its words at
the published steps and hands over to the script at the first step the machine allows.
"""

from __future__ import annotations

import datasets
import pytest
import torch

from dia2.data.corpus import row_codes, row_words
from dia2.data.teacher import TrainingExample, build_example, tail_frames
from dia2.generation.config import GenerationConfig
from dia2.generation.prefix import VoicePrefix, prefix_plan
from dia2.text.align import NEW_WORD_STEP_OFFSET
from dia2.text.script import TextTokenIds, parse_script
from dia2.text.state_machine import StateMachine, drive_forced, forced_text_streams
from dia2.text.utterance import AlignedUtterance, align_prefix, align_utterance, script_text
from dia2.text.words import SpokenWord
from tests.conftest import PREP_FIXTURES, PREP_SPEAKER_MAP
from tests.helpers.corpora import synthetic_rows
from tests.helpers.letters import LetterTokenizer, letter_data

FRAME = 1 / 12.5
HALF_FRAME = FRAME / 2 + 1e-9  # a rounded frame lies within half a frame of the time (float slack)


def inference_machine(data, ids) -> StateMachine:
    """The machine decoding runs with the generation defaults (as `Dia2.generate` builds it)."""
    return StateMachine.from_config(data, ids, initial_padding=GenerationConfig().initial_padding)


def unforced_text(machine: StateMachine, entries, actions: list[int], columns: int):
    """Text rows [columns] of the unforced machine fed `actions` as sampled actions, and its state."""
    state = machine.new_state(entries)
    main, second = [machine.ids.bos], [machine.ids.pad]
    for step in range(columns - 1):
        m, s = machine.process(state, step, actions[step])
        main.append(m)
        second.append(s)
    return main, second, state


def check_row(example: TrainingExample, utterance: AlignedUtterance, tokenizer, ids, data) -> None:
    """The invariant for one row (module docstring)."""
    script = script_text(utterance)
    entries = parse_script(script, tokenizer, ids)
    assert entries == list(utterance.entries), script
    main, second, state = unforced_text(inference_machine(data, ids), entries, example.action_target.tolist(), example.columns)
    assert main == example.tokens[0].tolist(), script
    assert second == example.tokens[1].tolist(), script
    assert [step for _, step in state.transcript] == list(utterance.alignment.new_word_steps)
    assert state.end_step == utterance.alignment.end_of_speech_step == example.new_word_steps[-1]
    # Timestamps round-trip: decoding reports a word at frame step + 1 - offset, its aligned frame.
    frames = [step + 1 - NEW_WORD_STEP_OFFSET for _, step in state.transcript]
    assert frames == [w.start_frame for w in utterance.alignment.words]


def check_rows(rows, tokenizer, ids, data) -> int:
    """check_row on every corpus row; returns how many breaks the rows hold."""
    breaks = 0
    for row in rows:
        codes, words = row_codes(row), row_words(row)
        utterance = align_utterance(words, tokenizer, ids)
        check_row(build_example(codes, words, tokenizer, ids, data), utterance, tokenizer, ids, data)
        breaks += len(utterance.alignment.breaks)
    return breaks


# --- hand-built alignments ------------------------------------------------------------------------


def _words(*spans, speakers=None):
    text = "abcdefghijklmnop"
    return [SpokenWord(text[i] * (1 + i % 3), a, b, (speakers or [1] * len(spans))[i]) for i, (a, b) in enumerate(spans)]


HAND_BUILT = {
    "first word at frame 0": _words((0.0, 0.2), (0.3, 0.5)),
    "first word at frame 1": _words((0.08, 0.3), (0.4, 0.6)),
    "first word at frame 5": _words((0.4, 0.6), (0.7, 0.9)),
    "long pauses": _words((0.1, 0.3), (1.2, 1.4), (1.5, 1.6), (3.0, 3.2)),
    "pause just inside the budget": _words((0.0, 0.1), (7 * FRAME, 8 * FRAME), (15 * FRAME, 16 * FRAME)),
    "long words": _words((0.1, 1.0), (1.0, 1.9), (2.0, 3.5)),
    "overlapping times": _words((0.2, 0.6), (0.3, 0.5), (0.35, 0.9)),
    "two speakers": _words((0.3, 0.5), (0.6, 0.9), (2.0, 2.2), (2.3, 2.5), speakers=[1, 1, 2, 2]),
}


def _ids(data, tok) -> TextTokenIds:
    return TextTokenIds.from_tokenizer(data, tok)


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("name", sorted(HAND_BUILT))
def test_hand_built_rows(name, k):
    data = letter_data(second_stream_ahead=k)
    tok = LetterTokenizer()
    ids = _ids(data, tok)
    words = HAND_BUILT[name]
    utterance = align_utterance(words, tok, ids)
    frames = utterance.alignment.end_of_speech_step + tail_frames(data) + 3
    example = build_example(torch.zeros(2, frames, dtype=torch.long), words, tok, ids, data)
    check_row(example, utterance, tok, ids, data)
    if name == "long pauses":
        assert len(utterance.alignment.breaks) == 3  # the lead-in, and the two pauses of 0.9 s and 1.4 s
    if name == "first word at frame 0":
        assert utterance.alignment.breaks == ()


def test_the_prefix_rule_would_break_the_invariant():
    """The check can fail, and training rows must not use the prefix rule: its entries (the first
    word at frame >= 1 without a break, a pause as the word's padding) put words where the
    unforced machine cannot, so its forced text is not what unforced decoding gives."""
    data, tok = letter_data(), LetterTokenizer()
    ids = _ids(data, tok)
    prefix = align_prefix(HAND_BUILT["long pauses"], tok, ids)
    steps = prefix.alignment.new_word_steps
    columns = steps[-1] + 20
    machine = inference_machine(data, ids)
    forced_main, _ = forced_text_streams(machine, prefix.entries, steps, columns)
    actions = [machine.action_new_word if s in steps else machine.action_pad for s in range(columns - 1)]
    main, _, _ = unforced_text(machine, prefix.entries, actions, columns)
    assert main != forced_main


# --- synthetic corpora (the trainer tests') ------------------------------------------------------


@pytest.mark.parametrize("dialogue", [False, True])
def test_synthetic_corpora(tiny_tts, dialogue):
    rows = synthetic_rows(tiny_tts, voice=1, count=12, seed=5, words=(2, 8), dialogue=dialogue)
    check_rows(rows, tiny_tts.tokenizer, tiny_tts.ids, tiny_tts.model.config.data)


# --- data prep on the espeak-ng fixtures ----------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory, prep_model, whisper, prep_speaker_map, tiny_en, prepared_fixtures):
    """Two data-prep runs over the fixtures: the defaults (the session's `prepared_fixtures`), and
    --max-pause 3 (so the 1.6 s pause of alice/weather stays inside one utterance, as a break)."""
    from data_prep.config import AsrOptions, OutputOptions, PrepConfig, RunOptions, SegmentOptions, SpeakerOptions
    from data_prep.pipeline import run_prep

    breaks = tmp_path_factory.mktemp("prep") / "breaks"
    config = PrepConfig(
        PREP_FIXTURES, breaks, asr=AsrOptions(asr_model=tiny_en), speaker=SpeakerOptions(speaker_map=prep_speaker_map),
        segment=SegmentOptions(max_pause=3.0), out=OutputOptions(seed=0), run=RunOptions(threads=1, progress=False),
    )
    run_prep(config, prep_model, whisper)
    corpora = {}
    for name, folder in (("default", prepared_fixtures[0]), ("breaks", breaks)):
        loaded = datasets.load_from_disk(str(folder))
        corpora[name] = [row for split in loaded for row in loaded[split]]
    return prep_model, corpora


@pytest.mark.parametrize("name", ["default", "breaks"])
def test_every_row_of_the_prepared_corpora(prepared, name):
    model, corpora = prepared
    rows = corpora[name]
    assert {r["source_file"] for r in rows} == set(PREP_SPEAKER_MAP)  # single voices and the dialogue
    breaks = check_rows(rows, model.tokenizer, model.ids, model.data)
    for row in rows:  # data prep keeps exactly the tail the stop rule needs
        utterance = align_utterance(row_words(row), model.tokenizer, model.ids)
        assert row_codes(row).shape[1] == utterance.alignment.end_of_speech_step + tail_frames(model.data)
    if name == "breaks":
        # The 1.6 s pause in alice/weather (20 frames) is a break entry inside one utterance.
        weather = [r for r in rows if r["source_file"] == "alice/weather.flac"]
        assert len(weather) == 1
        utterance = align_utterance(row_words(weather[0]), model.tokenizer, model.ids)
        assert max(b.frames for b in utterance.alignment.breaks) >= 12
        assert breaks > len(rows)


# --- voice prefixes: forced by the published rule, not held to the invariant ----------------------


PREFIX_WORDS = {
    "one speaker": [SpokenWord("hello", 0.3, 0.6, 1), SpokenWord("there", 1.5, 1.9, 1)],
    "first word at frame 0": [SpokenWord("hello", 0.0, 0.3, 1), SpokenWord("there", 0.8, 1.1, 1)],
    "two speakers": [SpokenWord("hello", 0.3, 0.6, 1), SpokenWord("how", 1.72, 1.9, 2), SpokenWord("are", 2.0, 2.2, 2)],
}


@pytest.mark.parametrize("name", sorted(PREFIX_WORDS))
@pytest.mark.parametrize("frames", [30, 60])
def test_a_voice_prefix_is_forced_as_published_and_the_script_follows(tiny_tts, name, frames):
    """Forced along its steps (as the frame loop forces a prefix), the machine starts every prefix
    word at its step, at its heard frame within rounding (frame 1 at the earliest); then, asked
    for a word at every free step, it starts the script's first word as soon as the last prefix
    word's tokens and padding are done, and not before the first free step."""
    K = tiny_tts.model.config.num_codebooks
    voice = VoicePrefix(torch.zeros(K, frames, dtype=torch.long), tuple(PREFIX_WORDS[name]))
    entries, prefix = prefix_plan(voice, tiny_tts.tokenizer, tiny_tts.ids)
    assert all(e.tokens for e in entries) and len(entries) == prefix.num_words == len(PREFIX_WORDS[name])
    script = tiny_tts.parse("[S1] Fine thanks.")
    machine = inference_machine(tiny_tts.model.config.data, tiny_tts.ids)
    last_forced = max(*prefix.new_word_steps, frames - 2)  # as the frame loop forces the prefix
    state = machine.new_state(entries + script)
    drive_forced(machine, state, frozenset(prefix.new_word_steps), range(last_forced + 1))
    assert [step for _, step in state.transcript] == list(prefix.new_word_steps)
    for (text, step), word in zip(state.transcript, PREFIX_WORDS[name]):
        heard = max(word.start, FRAME)  # the published rule's earliest frame is 1
        assert text == word.text and abs((step + 1 - NEW_WORD_STEP_OFFSET) * FRAME - heard) <= HALF_FRAME
    step = last_forced + 1
    while len(state.transcript) == prefix.num_words:
        machine.process(state, step, machine.action_new_word)
        step += 1
    last_step, first = state.transcript[-1 - 1][1], state.transcript[-1][1]
    assert first == max(last_forced + 1, last_step + entries[-1].padding + 1)


def test_generation_reports_prefix_words_at_their_times(tiny_tts):
    words = PREFIX_WORDS["two speakers"]
    K = tiny_tts.model.config.num_codebooks
    voice = VoicePrefix(torch.randint(0, 2048, (K, 40), generator=torch.Generator().manual_seed(0)), tuple(words))
    result = tiny_tts.generate("[S1] Fine.", GenerationConfig(seed=0, include_prefix=True, max_frames=60), prefix=voice)
    reported = result.timestamps[: len(words)]
    assert [w for w, _ in reported] == [w.text for w in words]
    assert all(abs(t - w.start) <= HALF_FRAME for (_, t), w in zip(reported, words))
    assert [w for w, _ in result.timestamps[len(words) :]] == ["Fine."]
