"""finetune.data: corpus loading and checks, the collated grid of a hand-built utterance, and the
length-bucketed, resumable batch order. Also home of the synthetic-corpus helpers the trainer
tests use (`synthetic_rows`, `write_corpus`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dia2.data.corpus import CorpusError, CorpusMeta, corpus_features, make_row
from dia2.data.grid import FRAME_RATE
from dia2.data.teacher import tail_frames
from dia2.text.tokenizer import tokenizer_fingerprint
from dia2.text.utterance import align_utterance
from dia2.text.words import SpokenWord
from finetune.data import (
    BatchStream,
    DataPosition,
    epoch_batches,
    examples_from_rows,
    load_training_data,
    make_batch,
    uncond_mask,
)

VOCAB = "hello there how are you doing today the quick brown fox jumps over lazy dog".split()
PERIOD = 4


# --- synthetic corpora (used by the trainer tests too) ------------------------------------------


def voice_codes(voice: int, frames: int, num_codebooks: int, seed: int, noise: float = 0.1) -> torch.Tensor:
    """Codes [K, frames] of a synthetic "voice": each codebook cycles through a short pattern
    drawn for that voice (so a model can learn it), from a random phase, with `noise` of the
    cells random. Different voices have different patterns."""
    table = torch.randint(0, 2048, (num_codebooks, PERIOD), generator=torch.Generator().manual_seed(7919 * voice + 1))
    g = torch.Generator().manual_seed(seed)
    phase = int(torch.randint(0, PERIOD, (), generator=g))
    codes = table[:, (torch.arange(frames) + phase) % PERIOD]
    random_cells = torch.rand(codes.shape, generator=g) < noise
    return torch.where(random_cells, torch.randint(0, 2048, codes.shape, generator=g), codes)


def synthetic_words(count: int, seed: int, dialogue: bool = False) -> list[SpokenWord]:
    """`count` words spoken one after the other (0.25-0.5 s each, short gaps); with dialogue=True
    the speaker changes every two words."""
    rng = np.random.default_rng(seed)
    words, t = [], 0.3
    for i in range(count):
        length = float(rng.uniform(0.25, 0.5))
        speaker = 1 + (i // 2) % 2 if dialogue else 1
        words.append(SpokenWord(str(rng.choice(VOCAB)), round(t, 2), round(t + length, 2), speaker))
        t += length + float(rng.uniform(0.05, 0.2))
    return words


def synthetic_rows(tts, voice: int, count: int, seed: int, words: tuple[int, int] = (2, 4), dialogue: bool = False) -> list[dict]:
    """Corpus rows for the model of `tts`: words spoken by a synthetic voice, audio long enough
    for the end-of-speech tail."""
    rows = []
    speakers = ["voice-%d" % voice, "voice-%d-b" % voice] if dialogue else ["voice-%d" % voice]
    for i in range(count):
        spoken = synthetic_words(int(np.random.default_rng([seed, i]).integers(*words, endpoint=True)), seed * 1000 + i, dialogue)
        eos = align_utterance(spoken, tts.tokenizer, tts.ids).alignment.end_of_speech_step
        frames = eos + tail_frames(tts.model.config.data) + 2
        codes = voice_codes(voice, frames, tts.model.config.num_codebooks, seed * 1000 + i)
        rows.append(make_row(codes, spoken, speakers, f"voice{voice}/{i}.wav", 0.0, frames / FRAME_RATE, 1.0))
    return rows


def write_corpus(folder: Path, tts, train: list[dict], validation: list[dict], **meta_overrides) -> Path:
    """A corpus folder as data prep writes it, with the tiny model's codec/tokenizer fingerprints."""
    import datasets

    K = tts.model.config.num_codebooks
    features = corpus_features(K)
    splits = {name: datasets.Dataset.from_list(rows, features=features) if rows else
              datasets.Dataset.from_dict({k: [] for k in features}, features=features)
              for name, rows in (("train", train), ("validation", validation))}
    # One shard each: datasets 5.2 writes an empty split as zero shards, which it cannot load back.
    datasets.DatasetDict(splits).save_to_disk(str(folder), num_shards={name: 1 for name in splits})
    meta = dict(
        codec="tiny-mimi", codec_fingerprint=tts.codec.fingerprint, num_codebooks=K, tokenizer="tiny",
        tokenizer_fingerprint=tokenizer_fingerprint(tts.tokenizer), frame_rate=FRAME_RATE, sample_rate=24000,
        delay_pattern=tuple(tts.model.config.data.delay_pattern), asr_model="given", tool_version="test",
    )
    CorpusMeta(**{**meta, **meta_overrides}).save(folder)
    return folder


def _load(folder, tts, max_columns=10_000):
    return load_training_data(folder, tts.tokenizer, tts.ids, tts.model.config.data, tts.codec.fingerprint, max_columns)


# --- the collated grid, by hand ------------------------------------------------------------------


def test_collator_on_a_hand_built_three_word_utterance():
    """Rows -> grids -> batch, on the three-word example worked out by hand in test_teacher."""
    from tests.unit.test_teacher import STEPS, WORDS, LetterTokenizer, N, _data

    data, tok = _data(), LetterTokenizer()
    from dia2.text.script import TextTokenIds

    ids = TextTokenIds.from_tokenizer(data, tok)
    codes = torch.arange(2 * N).view(2, N) % 2048
    # A fourth word "f" at 1.2 s: frame 15 (after "de" at 10, 2 tokens: 13..17 needs no break),
    # step 17; end of speech at max(17, round(16.25)) = 17, step 19; 19 + 2 + 6 + 1 = 28 columns
    # and 19 + tail 8 = 27 frames.
    longer = torch.arange(2 * 27).view(2, 27) % 2048
    four = [*WORDS, SpokenWord("f", 1.2, 1.3)]
    rows = [make_row(codes, WORDS, ["ann"], "a.wav", 0, N / 12.5, 1.0), make_row(longer, four, ["ann"], "b.wav", 0, 2, 1.0)]
    split = examples_from_rows(rows, tok, ids, data, max_columns=100)
    assert [e.columns for e in split.examples] == [24, 28] and split.seconds == pytest.approx((N + 27) / 12.5)
    batch = make_batch(split.examples, [0, 1], data, ids, drop_mask=[False, True])
    assert batch.tokens.shape == (2, 4, 28)
    # Row 0 is the hand-checked grid (test_teacher): main text bos, pads, new_word at column 6...
    main = [1, 3, 3, 3, 3, 3, 2, 100, 10, 11, 2, 12, 3, 2, 13, 14] + [3] * 8
    assert batch.tokens[0, 0, :24].tolist() == main
    assert [t for t, a in enumerate(batch.action_target[0].tolist()) if a == 1] == list(STEPS)
    # ... padded after its end: text pad, audio pad, every target masked.
    assert batch.tokens[0, 0, 24:].tolist() == [3] * 4 and (batch.tokens[0, 2:, 24:] == 2049).all()
    assert batch.action_mask[0].tolist() == [True] * 23 + [False] * 4
    assert batch.audio_mask[0, 0].tolist() == [True] * 23 + [False] * 4
    assert batch.audio_mask[0, 1].tolist() == [False] + [True] * 22 + [False] * 4
    # Row 1 was dropped to the unconditional input: main text zero, second text pad, audio kept.
    assert (batch.tokens[1, 0] == 7).all() and (batch.tokens[1, 1] == 3).all()
    assert batch.tokens[1, 2, 1:].tolist() == longer[0].tolist()
    assert batch.action_mask[1].all() and batch.frames == 23 + 27


def test_rows_that_cannot_train_are_skipped_and_counted(tiny_tts):
    good = synthetic_rows(tiny_tts, voice=1, count=2, seed=0)
    too_short = dict(good[0], codes=good[0]["codes"][:5], duration=0.4)
    unsure = dict(good[1], asr_confidence=0.2)
    split = examples_from_rows(
        [good[0], too_short, unsure, good[1]], tiny_tts.tokenizer, tiny_tts.ids, tiny_tts.model.config.data,
        max_columns=10_000, min_asr_confidence=0.5,
    )
    assert len(split.examples) == 2 and sum(split.skipped.values()) == 2
    assert any("end-of-speech" in reason for reason in split.skipped)
    tight = examples_from_rows(good, tiny_tts.tokenizer, tiny_tts.ids, tiny_tts.model.config.data, max_columns=20)
    assert tight.skipped == {"longer than data.max_frames_per_batch": 2}


# --- corpus loading ----------------------------------------------------------------------------


def test_corpus_loads_with_speakers_and_figures(tiny_tts, tmp_path):
    folder = write_corpus(tmp_path / "c", tiny_tts, synthetic_rows(tiny_tts, 1, 3, 0, dialogue=True),
                          synthetic_rows(tiny_tts, 1, 1, 9, dialogue=True))
    corpus = _load(folder, tiny_tts)
    assert len(corpus.train.examples) == 3 and len(corpus.validation.examples) == 1
    assert corpus.speakers == {"S1": ["voice-1"], "S2": ["voice-1-b"]}
    summary = corpus.summary()
    assert summary["train_utterances"] == 3 and 0 < summary["train_hours"] < 0.01


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"codec_fingerprint": "mimi-other"}, "built with codec tiny-mimi .* rebuild the corpus"),
        ({"tokenizer_fingerprint": "tok-other"}, "built with tokenizer tiny"),
        ({"num_codebooks": 32}, "holds 32 codebooks but the model uses 8"),
    ],
)
def test_corpus_for_another_codec_or_tokenizer_is_refused(tiny_tts, tmp_path, meta, message):
    rows = synthetic_rows(tiny_tts, 1, 1, 0)
    with pytest.raises(CorpusError, match=message):
        _load(write_corpus(tmp_path / "c", tiny_tts, rows, [], **meta), tiny_tts)


def test_empty_or_missing_corpus_is_refused(tiny_tts, tmp_path):
    with pytest.raises(CorpusError, match="no usable training utterances .*the split is empty"):
        _load(write_corpus(tmp_path / "empty", tiny_tts, [], []), tiny_tts)
    with pytest.raises(CorpusError, match="not a corpus"):
        _load(tmp_path / "nothing", tiny_tts)
    rows = synthetic_rows(tiny_tts, 1, 2, 0)
    with pytest.raises(CorpusError, match="no usable training utterances .*2 x longer than"):
        _load(write_corpus(tmp_path / "long", tiny_tts, rows, []), tiny_tts, max_columns=10)


# --- batching ----------------------------------------------------------------------------------

LENGTHS = [int(x) for x in np.random.default_rng(0).integers(30, 200, size=97)]


def test_batches_respect_the_frame_budget_and_cover_the_epoch():
    batches = epoch_batches(LENGTHS, max_frames=600, bucket_size=32, seed=3, epoch=0)
    assert all(len(b) * max(LENGTHS[i] for i in b) <= 600 or len(b) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    # Bucketing by length wastes far less padding than batching in random order would.
    padded = sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)
    assert padded < 1.25 * sum(LENGTHS)


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    first = epoch_batches(LENGTHS, 600, 32, seed=3, epoch=0)
    assert first == epoch_batches(LENGTHS, 600, 32, seed=3, epoch=0)
    assert first != epoch_batches(LENGTHS, 600, 32, seed=3, epoch=1)
    assert first != epoch_batches(LENGTHS, 600, 32, seed=4, epoch=0)


def test_stream_resumes_exactly_from_a_position_across_epochs():
    stream = BatchStream(LENGTHS, 600, 32, seed=1)
    drawn = [next(stream) for _ in range(60)]  # several epochs
    assert {p.epoch for p, _ in drawn} == {0, 1, 2}
    resumed = BatchStream(LENGTHS, 600, 32, seed=1, position=drawn[24][0])
    assert [next(resumed) for _ in range(36)] == drawn[24:]


def test_processes_share_an_epoch_without_overlap():
    ranks = [BatchStream(LENGTHS, 600, 32, seed=1, rank=r, world=2) for r in range(2)]
    per_rank = [ranks[r].shard(0) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    seen = [i for shard in per_rank for b in shard for i in b]
    assert len(seen) == len(set(seen)) and len(seen) > 0.9 * len(LENGTHS)
    with pytest.raises(CorpusError, match="fewer than the 4 processes"):
        BatchStream([50, 50], 100, 32, seed=0, rank=0, world=4)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_epoch_draws_every_usable_batch_once_in_order(world):
    """Drawn with next(), an epoch gives each process its shard of the epoch's batches (all of
    them on one process; the groups of `world` that fill up on several), then the next epoch
    starts at its first batch."""
    ranks = [BatchStream(LENGTHS, 600, 32, seed=1, rank=r, world=world) for r in range(world)]
    for rank, stream in enumerate(ranks):
        shards = [stream.shard(0), stream.shard(1)]
        drawn = [next(stream) for _ in range(len(shards[0]) + len(shards[1]))]
        assert [b for _, b in drawn] == shards[0] + shards[1]
        assert [p for p, _ in drawn] == [DataPosition(e, rank + world * i) for e in (0, 1) for i in range(len(shards[e]))]
    batches = ranks[0].batches(0)
    assert len(ranks[0].shard(0)) == len(batches) // world  # a group left incomplete is dropped
    if world == 1:
        assert ranks[0].shard(0) == batches


def test_unconditional_dropout_rate_and_determinism():
    draws = [uncond_mask(0, DataPosition(0, i), 0, 50, 0.15) for i in range(200)]
    rate = np.mean(draws)
    assert 0.12 < rate < 0.18
    assert uncond_mask(0, DataPosition(2, 5), 1, 8, 0.5) == uncond_mask(0, DataPosition(2, 5), 1, 8, 0.5)
    assert not any(uncond_mask(0, DataPosition(0, 0), 0, 100, 0.0))
