"""The training corpus format, shared by data prep (writer) and the trainer (reader).

A corpus is a `datasets.DatasetDict` (train / validation) saved with `save_to_disk`, plus a
`corpus_meta.json` beside it. One row is one utterance:

| column | type | meaning |
|---|---|---|
| codes | int16 [N, K] | Mimi codes, frames first (`Array2D` needs the variable dim first) |
| words | list of {text, start, end, speaker} | words in order, seconds from the utterance start; speaker 1 or 2 |
| speakers | list of str | source speaker names for [S1], [S2] (one for a single voice) |
| duration | float32 | seconds of the encoded audio (N / 12.5) |
| source_file | str | the recording, as given to data prep |
| source_start, source_end | float32 | the utterance's span in the recording, seconds |
| asr_confidence | float32 | mean word probability from the transcriber (1.0 for given text) |
| gain_db | float32 or null | loudness gain applied to the utterance (dB; null: levels kept as recorded) |
| speech_fraction | float32 or null | share of the utterance's audio that is speech (silero-vad; null: not measured) |
| dnsmos_sig, dnsmos_bak, dnsmos_ovrl | float32 or null | DNSMOS P.835 of its audio: speech, background, overall (1-5; null: not scored) |

The meta records what the codes and words mean (codec and tokenizer fingerprints, frame rate,
delays, ASR model, tool version); the trainer refuses a corpus whose codec or tokenizer differ
from the model's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dia2.errors import Dia2Error
from dia2.model.config import FRAME_RATE
from dia2.text.words import SpokenWord

CUT_FIGURES = ("gain_db", "speech_fraction", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
"""What data prep measured of each utterance's audio (null where that stage was off); the trainer
reads none of them, and a corpus without them loads alike."""
SCHEMA_VERSION = 2
"""2: rows hold audio up to `dia2.data.teacher.tail_frames` after the end-of-speech step of the
alignment that spells pauses as break entries (version 1 rows were cut for the old rule)."""
META_FILE = "corpus_meta.json"
SPLITS = ("train", "validation")


class CorpusError(Dia2Error, ValueError):
    """A corpus that cannot be used; the message names the corpus and the fix."""


def corpus_features(num_codebooks: int):
    """The `datasets.Features` of a corpus with K codebooks."""
    from datasets import Array2D, Features, List, Value

    return Features(
        {
            "codes": Array2D(shape=(None, num_codebooks), dtype="int16"),
            "words": List(
                {"text": Value("string"), "start": Value("float32"), "end": Value("float32"), "speaker": Value("int8")}
            ),
            "speakers": List(Value("string")),
            "duration": Value("float32"),
            "source_file": Value("string"),
            "source_start": Value("float32"),
            "source_end": Value("float32"),
            "asr_confidence": Value("float32"),
            **{name: Value("float32") for name in CUT_FIGURES},
        }
    )


@dataclass(frozen=True)
class CorpusMeta:
    """What a corpus was built with; written as `corpus_meta.json`."""

    codec: str  # repo id or path the codec was loaded from (informative)
    codec_fingerprint: str  # `MimiCodec.fingerprint`: what the codes mean
    num_codebooks: int
    tokenizer: str  # informative
    tokenizer_fingerprint: str  # `tokenizer_fingerprint(...)`: what the token ids mean
    frame_rate: float
    sample_rate: int
    delay_pattern: tuple[int, ...]
    asr_model: str
    tool_version: str
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / META_FILE
        data = asdict(self)
        data["delay_pattern"] = list(self.delay_pattern)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CorpusMeta":
        path = Path(folder) / META_FILE
        if not path.is_file():
            raise CorpusError(f"{folder} has no {META_FILE}: it is not a corpus written by dia2-prep")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in fields(cls)}
            meta = cls(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError) as exc:
            raise CorpusError(f"{path} is unreadable ({exc}); rebuild the corpus with dia2-prep") from exc
        if meta.schema_version != SCHEMA_VERSION:
            raise CorpusError(
                f"{path}: corpus schema version {meta.schema_version}, this tool reads {SCHEMA_VERSION} (its rows are "
                "cut for another word alignment and end-of-speech tail); rebuild it with this version's dia2-prep"
            )
        return cls(**{**asdict(meta), "delay_pattern": tuple(meta.delay_pattern)})

    def check_compatible(self, codec_fingerprint: str, tokenizer_fingerprint: str, where: str = "corpus") -> None:
        """Raise CorpusError if the corpus was built for another codec or tokenizer."""
        if self.codec_fingerprint != codec_fingerprint:
            raise CorpusError(
                f"{where} was built with codec {self.codec} ({self.codec_fingerprint}) but the model uses "
                f"{codec_fingerprint}: rebuild the corpus with the model's codec (dia2-prep --mimi ...)"
            )
        if self.tokenizer_fingerprint != tokenizer_fingerprint:
            raise CorpusError(
                f"{where} was built with tokenizer {self.tokenizer} ({self.tokenizer_fingerprint}) but the model "
                f"uses {tokenizer_fingerprint}: rebuild the corpus with the model's tokenizer"
            )


def make_row(
    codes: torch.Tensor,
    words: Sequence[SpokenWord],
    speakers: Sequence[str],
    source_file: str,
    source_start: float,
    source_end: float,
    asr_confidence: float,
    frame_rate: float = FRAME_RATE,
    figures: Mapping[str, float | None] | None = None,
) -> dict[str, Any]:
    """One corpus row from codes [K, N] and timed words; `figures`: the CUT_FIGURES measured (the others null)."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be [K, N], got shape {tuple(codes.shape)}")
    return {
        "codes": codes.t().contiguous().cpu().numpy().astype(np.int16),
        "words": [{"text": w.text, "start": w.start, "end": w.end, "speaker": w.speaker} for w in words],
        "speakers": list(speakers),
        "duration": codes.shape[1] / frame_rate,
        "source_file": source_file,
        "source_start": source_start,
        "source_end": source_end,
        "asr_confidence": asr_confidence,
        **{name: (figures or {}).get(name) for name in CUT_FIGURES},
    }


def row_codes(row: Mapping[str, Any]) -> torch.Tensor:
    """Codes [K, N] (long) of a corpus row."""
    return torch.as_tensor(np.asarray(row["codes"], dtype=np.int64)).t().contiguous()


def row_words(row: Mapping[str, Any]) -> list[SpokenWord]:
    """The timed words of a corpus row (either the list-of-dicts or the dict-of-lists layout)."""
    words = row["words"]
    if isinstance(words, Mapping):
        words = [dict(zip(words, values)) for values in zip(*words.values())]
    return [SpokenWord(w["text"], float(w["start"]), float(w["end"]), int(w["speaker"])) for w in words]
