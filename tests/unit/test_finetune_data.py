"""finetune.data: corpus loading and checks, the collated grid of a hand-built utterance, and the
length-bucketed, resumable batch order (synthetic corpora: tests/helpers/corpora.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dia2.data.corpus import CorpusError, make_row
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
from tests.helpers.corpora import synthetic_rows, write_corpus
from tests.helpers.letters import STEPS, WORDS, LetterTokenizer, N, letter_data


def _load(folder, tts, max_columns=10_000):
    return load_training_data(folder, tts.tokenizer, tts.ids, tts.model.config.data, tts.codec.fingerprint, max_columns)


# --- the collated grid, by hand ------------------------------------------------------------------


def test_collator_on_a_hand_built_three_word_utterance():
    """Rows -> grids -> batch, on the three-word example worked out by hand in test_teacher."""
    data, tok = letter_data(), LetterTokenizer()
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
