"""How the speech server makes a voice's prefix from recordings: the voice store's `make_prefix`.

Whisper (faster-whisper) hears the words and their times. It is loaded once, in a background
thread as the server starts, so a missing or broken model is found at start-up (a warning, and
`/health` names it) rather than at the first upload. Without it the server still takes uploads
that bring a `transcript`: the typed words are timed from the speech in the recording
(`dia2.generation.prefix.prefix_from_transcript`); only uploads that need Whisper to hear the words
are refused, with a 503 (the server's fault, not the client's). With Whisper, a given transcript
replaces the heard words and takes their times (`dia2.generation.prefix.with_transcript`).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from dia2.audio.asr import AsrError, WhisperTranscriber
from dia2.generation.prefix import VoicePrefix, prefix_from_transcript, with_transcript
from dia2.generation.voice import VoiceError
from dia2.text.transcript import untagged

logger = logging.getLogger(__name__)


class WhisperUnavailable(VoiceError):
    """An upload that needs Whisper, on a server whose Whisper model cannot be loaded or failed."""

    status = 503


class PrefixMaker:
    """make_prefix(speaker_1, speaker_2=None, transcript=None) -> VoicePrefix for `VoiceStore`, over a
    `Dia2` (its codec encodes the prefix) and a faster-whisper model (name or folder)."""

    def __init__(self, tts, whisper_model: str) -> None:
        self.tts, self.whisper_model = tts, whisper_model
        self._transcriber: WhisperTranscriber | None = None
        self._error: str | None = None
        self._loaded = threading.Event()
        threading.Thread(target=self._load, daemon=True, name="dia2-whisper-load").start()

    def _load(self) -> None:
        device = "cuda" if self.tts.model.device.type == "cuda" else "cpu"
        try:
            transcriber = WhisperTranscriber(self.whisper_model, device=device)
            transcriber.load()
            self._transcriber = transcriber
        except Exception as exc:  # AsrError, and anything the device check raises: the server serves on
            self._error = str(exc)
            logger.warning("Whisper is unavailable, so voice uploads without a transcript are refused (503): %s", exc)
        finally:
            self._loaded.set()

    def status(self) -> dict:
        """What /health reports: the model and loading, ready or unavailable (with why)."""
        state = "loading" if not self._loaded.is_set() else "ready" if self._transcriber is not None else "unavailable"
        return {"model": self.whisper_model, "status": state, **({"error": self._error} if self._error else {})}

    def __call__(self, speaker_1: np.ndarray, speaker_2: np.ndarray | None = None,
                 transcript: str | None = None) -> VoicePrefix:
        self._loaded.wait()
        if self._transcriber is None:
            if transcript is None:
                raise WhisperUnavailable(
                    f"this server cannot hear the words of a recording: its Whisper model '{self.whisper_model}' is "
                    f"unavailable ({self._error}). Send the words spoken as 'transcript', or ask the operator to "
                    "start the server with a working --whisper-model"
                )
            return prefix_from_transcript(self.tts.codec, transcript, speaker_1, speaker_2)
        try:
            prefix = self.tts.make_prefix(speaker_1, speaker_2, self._transcriber)
        except AsrError as exc:
            raise WhisperUnavailable(f"Whisper failed on the server: {exc}") from exc
        return with_transcript(prefix, untagged(transcript)) if transcript else prefix
