"""Synthetic corpora for the trainer's tests: "voices" whose codes follow a learnable pattern,
words spoken one after another, and a corpus folder as data prep writes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dia2.data.corpus import CorpusMeta, corpus_features, make_row
from dia2.data.teacher import tail_frames
from dia2.model.config import FRAME_RATE, SAMPLE_RATE
from dia2.text.tokenizer import tokenizer_fingerprint
from dia2.text.utterance import align_utterance
from dia2.text.words import SpokenWord

VOCAB = "hello there how are you doing today the quick brown fox jumps over lazy dog".split()
PERIOD = 4


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
        tokenizer_fingerprint=tokenizer_fingerprint(tts.tokenizer), frame_rate=FRAME_RATE, sample_rate=SAMPLE_RATE,
        delay_pattern=tuple(tts.model.config.data.delay_pattern), asr_model="given", tool_version="test",
    )
    CorpusMeta(**{**meta, **meta_overrides}).save(folder)
    return folder
