"""Speaker embeddings: whose voice a clip sounds like, as a cosine between unit vectors.

`SpeakerEncoder` is the protocol (bring your own: ECAPA, WavLM...); `ResemblyzerEncoder` is the
default, since the resemblyzer package ships its 17 MB GE2E encoder's weights (no download). It
is imported on first use: resemblyzer pulls in librosa, which is slow to import.

A voice is the normalised mean of its recordings' embeddings (GE2E's speaker embedding), so one
long reference and many short ones count alike per recording.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dia2.audio.io import resample
from dia2.errors import Dia2Error

if TYPE_CHECKING:
    from resemblyzer import VoiceEncoder

DEFAULT_SPEAKER_ENCODER = "resemblyzer"
"""The speaker encoder used unless another is named (a `SpeakerEncoder` object, or None for none)."""
RESEMBLYZER_RATE = 16000
MIN_VOICED_SECONDS = 0.3
"""Shortest voiced audio (after resemblyzer's silence trimming) that gets an embedding: shorter
clips have too few 1.6 s-ish partial windows' worth of speech to say whose voice it is."""


class SpeakerError(Dia2Error, ValueError):
    """A speaker encoder that cannot be made or used; the message names it and the fix."""


class SpeakerEncoder(Protocol):
    """Speech -> a unit-length speaker embedding [D], or None when it holds too little speech."""

    def embed(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray | None:
        """Mono float32 waveform [S] at `sample_rate` -> unit vector [D] (None: no voice to embed)."""
        ...


class ResemblyzerEncoder:
    """resemblyzer's VoiceEncoder (GE2E, 256-d) with its own preprocessing (volume, VAD trim)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._encoder: VoiceEncoder | None = None

    def load(self) -> VoiceEncoder:
        if self._encoder is None:
            try:
                from resemblyzer import VoiceEncoder
            except ImportError as exc:
                raise SpeakerError(
                    f"the resemblyzer speaker encoder is not installed ({exc}): pip install 'dia2-toolkit[eval]' "
                    "(resemblyzer, webrtcvad-wheels), or skip speaker similarity: --speaker-encoder none (dia2-eval), "
                    "no eval.references (trainer)"
                ) from exc
            self._encoder = VoiceEncoder(self.device, verbose=False)
        return self._encoder

    def embed(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray | None:
        encoder = self.load()
        from resemblyzer import preprocess_wav

        wave = resample(np.asarray(waveform, dtype=np.float32), sample_rate, RESEMBLYZER_RATE)
        if not np.any(wave):
            return None
        # Resampled here (soxr) and handed over at its rate: resemblyzer's own path uses librosa's.
        wave = preprocess_wav(wave)
        if len(wave) < MIN_VOICED_SECONDS * RESEMBLYZER_RATE:
            return None
        return unit(encoder.embed_utterance(wave))


def speaker_encoder(spec: str | SpeakerEncoder | None, device: str = "cpu") -> SpeakerEncoder | None:
    """The encoder `spec` names: "resemblyzer", "none"/None (no similarity), or an encoder object."""
    if spec is None or spec == "none":
        return None
    if not isinstance(spec, str):
        return spec
    if spec == "resemblyzer":
        return ResemblyzerEncoder(device)
    raise SpeakerError(f"unknown speaker encoder '{spec}': use resemblyzer or none, or pass a SpeakerEncoder object (Python)")


def load_speaker_encoder(spec: str | SpeakerEncoder | None, device: str = "cpu") -> SpeakerEncoder | None:
    """`speaker_encoder(spec, device)`, loaded now: a missing package (SpeakerError) is refused
    before a caller loads a model and speaks, not at the first clip it scores."""
    encoder = speaker_encoder(spec, device)
    if isinstance(encoder, ResemblyzerEncoder):
        encoder.load()
    return encoder


def unit(vector: np.ndarray) -> np.ndarray:
    """`vector` scaled to length 1 (float64, so cosines of near-equal voices keep their digits)."""
    vector = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


def voice_embedding(embeddings: Sequence[np.ndarray]) -> np.ndarray | None:
    """The unit mean of unit embeddings [D] each (None when there are none)."""
    if not embeddings:
        return None
    return unit(np.mean([unit(e) for e in embeddings], axis=0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings [D]."""
    return float(np.dot(unit(a), unit(b)))
