"""Corpus rows and meta (the data-prep -> trainer contract), and the shared utterance alignment."""

import datasets
import pytest
import torch

from dia2.data.corpus import (
    CorpusError,
    CorpusMeta,
    corpus_features,
    make_row,
    row_codes,
    row_words,
)
from dia2.text.utterance import align_utterance, entries_for_words
from dia2.text.words import SpokenWord


def _meta(**overrides):
    base = dict(codec="kyutai/mimi", codec_fingerprint="mimi-a", num_codebooks=8, tokenizer="tok", tokenizer_fingerprint="tok-a",
                frame_rate=12.5, sample_rate=24000, delay_pattern=(2, 3), asr_model="tiny.en", tool_version="0.1.0")
    return CorpusMeta(**{**base, **overrides})


def test_rows_round_trip_through_save_to_disk(tmp_path):
    codes = torch.randint(0, 2048, (8, 30))
    words = [SpokenWord("hi", 0.25, 0.5, 1), SpokenWord("yo", 0.75, 1.0, 2)]
    row = make_row(codes, words, ["ann", "bob"], "a.wav", 1.0, 3.4, 0.93)
    ds = datasets.Dataset.from_list([row], features=corpus_features(8))
    datasets.DatasetDict(train=ds, validation=ds).save_to_disk(str(tmp_path))
    back = datasets.load_from_disk(str(tmp_path))["train"][0]
    assert torch.equal(row_codes(back), codes)
    assert row_words(back) == words  # these times are exact in float32
    assert back["speakers"] == ["ann", "bob"] and back["duration"] == pytest.approx(30 / 12.5)


def test_meta_round_trip_and_compatibility(tmp_path):
    meta = _meta()
    meta.save(tmp_path)
    assert CorpusMeta.load(tmp_path) == meta
    meta.check_compatible("mimi-a", "tok-a")
    with pytest.raises(CorpusError, match="built with codec kyutai/mimi .* rebuild the corpus"):
        meta.check_compatible("mimi-b", "tok-a")
    with pytest.raises(CorpusError, match="built with tokenizer tok"):
        meta.check_compatible("mimi-a", "tok-b")
    with pytest.raises(CorpusError, match="not a corpus"):
        CorpusMeta.load(tmp_path / "elsewhere")


def test_utterance_entries_follow_the_script_parser(tiny_tts):
    words = [SpokenWord("Hello", 0.3, 0.6, 1), SpokenWord("there:friend", 0.7, 1.3, 1), SpokenWord("Hi", 1.5, 1.8, 2)]
    pairs = entries_for_words(words, tiny_tts.tokenizer, tiny_tts.ids)
    assert [e.text for e, _ in pairs] == ["Hello", "there", "friend", "Hi"]
    assert pairs[1][1].start == pytest.approx(0.7) and pairs[2][1].start == pytest.approx(1.0)  # split span
    script = tiny_tts.parse("[S1] Hello there friend [S2] Hi")
    assert [e.tokens for e, _ in pairs] == [e.tokens for e in script]
    utt = align_utterance(words, tiny_tts.tokenizer, tiny_tts.ids)
    assert [e.padding for e in utt.entries if e.tokens] == [len(e.tokens) for e in script]  # as a script gives
    assert utt.alignment.new_word_steps == tuple(sorted(utt.alignment.new_word_steps))


def test_fingerprints_identify_codec_and_tokenizer(tiny_tts, tmp_path):
    from dia2.audio.codec import MimiCodec
    from dia2.text.tokenizer import load_tokenizer, tokenizer_fingerprint
    from dia2.tiny import build_tiny_mimi, build_tiny_tokenizer

    same = MimiCodec(build_tiny_mimi(seed=0))
    assert same.fingerprint == tiny_tts.codec.fingerprint
    assert MimiCodec(build_tiny_mimi(seed=1)).fingerprint != same.fingerprint
    assert MimiCodec(build_tiny_mimi(seed=0), num_codebooks=4).fingerprint != same.fingerprint
    assert tokenizer_fingerprint(load_tokenizer(build_tiny_tokenizer(tmp_path / "t"))) == tokenizer_fingerprint(tiny_tts.tokenizer)
    other = load_tokenizer(build_tiny_tokenizer(tmp_path / "u", vocab_size=400))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tts.tokenizer)
