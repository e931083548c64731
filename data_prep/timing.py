"""Wall time per pipeline stage, for the QC report and the benchmark."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

STAGES = ("read", "vad", "dnsmos", "diarize", "transcribe", "segment_align", "loudness", "encode", "write")
"""read: decode + resample; vad: silero-vad; dnsmos: DNSMOS quality windows; diarize: speaker
embeddings and clustering (--diarize); transcribe: Whisper; segment_align: utterances, filters,
alignment; loudness: each cut's level and true-peak limiting; encode: Mimi; write: cache files and
the corpus."""


class StageTimer:
    """Accumulates seconds per stage: `with timer.stage("encode"): ...`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; one of {STAGES}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def totals(self) -> dict[str, float]:
        """Seconds per stage, every stage listed, in pipeline order."""
        return {name: round(self.seconds.get(name, 0.0), 4) for name in STAGES}
