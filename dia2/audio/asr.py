"""Speech -> timed words: the one faster-whisper wrapper, shared by voice prefixes and data prep.

A voice prefix (`dia2.generation.prefix`) asks for one clip's words (`transcribe`); data prep asks
for Whisper's segments (`transcribe_segments`) so it can stitch a long recording's chunks (its
own `data_prep.transcribe`). Both get `SpokenWord`s with Whisper's word probabilities.

Decoding is at temperature 0 only: the fallback to sampling at higher temperatures re-decodes a
window up to five more times (it made tiny.en 6x slower on espeak-ng speech) and is not
reproducible, while what it would rescue is what data prep's confidence filter drops anyway.
Each window is decoded without the previous one's text, so a misheard window cannot prime the next.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dia2.audio.io import resample
from dia2.audio.whisper_offline import MULTILINGUAL_BASE, OfflineModelError, resolve_whisper_model
from dia2.device import AUTO, default_device, resolve_device, usable_cores
from dia2.errors import Dia2Error
from dia2.text.words import SpokenWord

if TYPE_CHECKING:
    from faster_whisper import BatchedInferencePipeline, WhisperModel

DEFAULT_WHISPER_MODEL = "small.en"
"""faster-whisper model that transcribes voice prefixes and data-prep recordings by default."""
WHISPER_RATE = 16000
"""Whisper's input sample rate (Hz)."""
VOICE_MODEL_OPTION = "--whisper-model (Python: WhisperTranscriber(model=...))"
"""How a voice-prefix user picks the Whisper model; named when it cannot be loaded."""
_CUDA_BATCH = 16  # Whisper windows per batch on CUDA when the batch size is left to us


class AsrError(Dia2Error, RuntimeError):
    """The speech recogniser cannot be loaded; the message names the model and the option that fixes it."""


class Transcriber(Protocol):
    """Speech -> timed words. Injectable: tests and servers bring their own."""

    def transcribe(self, waveform: np.ndarray, sample_rate: int) -> list[SpokenWord]:
        """Mono waveform [S] -> its words, seconds from its start, in spoken order."""
        ...


class WhisperTranscriber:
    """faster-whisper with word timestamps; batched (`BatchedInferencePipeline`) when asked.

    model: a size name ("small.en"), a local CTranslate2 folder, or a packaged offline model
    (`base-offline`: the multilingual base, `dia2.audio.whisper_offline`). device: cpu, cuda, cuda:1 or
    auto (cuda when available). compute_type: int8, float16 ... or auto (float16 on CUDA, int8 on
    CPU). language: a Whisper language code such as en or de (None: detected); an English-only
    model refuses any other. batch_size: Whisper windows decoded
    together (1: unbatched; 0: 16 on CUDA, unbatched on CPU, where batching does not pay).
    cpu_threads: CTranslate2's threads (0: OMP_NUM_THREADS when set, else the cores this process
    may use, up to CTranslate2's own 4: its 4 on a 2-core machine spin against everything else
    running, the speech engine included). model_option: how the user sets `model`,
    named in the error when it cannot be loaded (`--asr-model` in data prep).
    """

    def __init__(
        self,
        model: str | os.PathLike = DEFAULT_WHISPER_MODEL,
        device: str = "cpu",
        compute_type: str = "int8",
        language: str | None = None,
        beam_size: int = 5,
        batch_size: int = 1,
        cpu_threads: int = 0,
        model_option: str = VOICE_MODEL_OPTION,
        device_option: str = "--device",
        language_option: str = "--language",
    ) -> None:
        self.model_name = str(model)
        check_language(language, language_option)
        resolved = resolve_device(device, device_option)
        if resolved.type not in ("cpu", "cuda"):
            # CTranslate2, faster-whisper's engine, runs on the CPU and CUDA only.
            raise AsrError(f"{device_option} {device}: faster-whisper runs on cpu or cuda only")
        self.device = default_device() if device == AUTO else str(device)
        on_gpu = self.device.startswith("cuda")
        self.compute_type = compute_type if compute_type != AUTO else ("float16" if on_gpu else "int8")
        self.language, self.beam_size, self.cpu_threads = language, beam_size, cpu_threads
        batch = batch_size or (_CUDA_BATCH if on_gpu else 1)
        self.batch_size = batch if batch > 1 else 0  # 0: the plain (unbatched) model
        self.model_option, self.language_option = model_option, language_option
        self._model = None
        self._pipeline = None

    @property
    def identity(self) -> str:
        """What produces the words (model and settings): data prep's cache key and corpus meta."""
        return (
            f"faster-whisper:{_model_id(self.model_name)};compute={self.compute_type};"
            f"lang={self.language or 'auto'};beam={self.beam_size};batched={bool(self.batch_size)}"
        )

    def load(self) -> WhisperModel | BatchedInferencePipeline:
        """Load the model now (it is otherwise loaded on first use); AsrError if it cannot be."""
        if self._model is None:
            from faster_whisper import BatchedInferencePipeline, WhisperModel

            device, _, index = self.device.partition(":")
            try:
                location = resolve_whisper_model(self.model_name)
            except OfflineModelError as exc:
                raise AsrError(f"{self.model_option} {self.model_name}: {exc}") from exc
            try:
                model = WhisperModel(
                    location, device=device, device_index=int(index or 0),
                    compute_type=self.compute_type, cpu_threads=whisper_threads(self.cpu_threads),
                )
            except Exception as exc:  # faster-whisper raises many kinds; one clear message for all
                raise AsrError(
                    f"cannot load the Whisper model '{self.model_name}' ({type(exc).__name__}: {exc}); pass "
                    f"{self.model_option} with a local CTranslate2 model folder, or a model name that is cached "
                    "or downloadable"
                ) from exc
            if self.language not in (None, "en") and not model.model.is_multilingual:
                # faster-whisper would log a warning and transcribe as English: wrong words, silently.
                raise AsrError(
                    f"{self.model_option} {self.model_name} is an English-only Whisper model and cannot transcribe "
                    f"{self.language_option} {self.language}: pass a multilingual model ({MULTILINGUAL_BASE}, the "
                    "packaged base; small, large-v3 ...)"
                )
            self._model = model
            if self.batch_size:
                self._pipeline = BatchedInferencePipeline(self._model)
        return self._pipeline or self._model

    def transcribe_segments(self, waveform: np.ndarray, sample_rate: int) -> list[list[SpokenWord]]:
        """Mono waveform [S] -> Whisper segments (sentence-like runs) of words, seconds from its start."""
        kwargs = {
            "language": self.language, "beam_size": self.beam_size, "word_timestamps": True, "temperature": 0.0,
            "condition_on_previous_text": False,
        }
        if self.batch_size:
            kwargs["batch_size"] = self.batch_size
        segments, _ = self.load().transcribe(resample(waveform, sample_rate, WHISPER_RATE), **kwargs)
        out = []
        for segment in segments:
            words = [
                SpokenWord(w.word.strip(), float(w.start), float(w.end), probability=float(w.probability))
                for w in segment.words or []
                if w.word.strip()
            ]
            if words:
                out.append(words)
        return out

    def transcribe(self, waveform: np.ndarray, sample_rate: int) -> list[SpokenWord]:
        """Mono waveform [S] -> its words, seconds from its start (the `Transcriber` protocol)."""
        return [w for segment in self.transcribe_segments(waveform, sample_rate) for w in segment]


def whisper_threads(asked: int) -> int:
    """The CPU threads CTranslate2 is given for `asked` (0: see `WhisperTranscriber`); 0 leaves
    them to OMP_NUM_THREADS."""
    if asked or os.environ.get("OMP_NUM_THREADS"):
        return asked
    return min(4, usable_cores())


def whisper_languages() -> tuple[str, ...]:
    """The language codes Whisper knows (faster-whisper's list)."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


def check_language(language: str | None, option: str = "--language") -> None:
    """Refuse a language code Whisper does not know (None: detect), naming `option`."""
    if language is None:
        return
    known = whisper_languages()
    if language not in known:
        raise AsrError(
            f"{option} {language!r} is not a Whisper language code: use a code such as en, de, es, fr "
            f"(all {len(known)}: {', '.join(known)})"
        )


def _model_id(model: str) -> str:
    """A model name as is; a local folder as its path plus its weights' size and time, so a
    different model copied to the same path is told apart."""
    path = Path(model).expanduser()
    weights = path / "model.bin"
    if weights.is_file():
        stat = weights.stat()
        return f"{path.resolve()}@{stat.st_size}:{stat.st_mtime_ns}"
    return model
