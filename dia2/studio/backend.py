"""What every tab of the studio shares: the model on a serving engine, the server's voice store and
adapter voices, the background jobs, and the page-facing error handling.

The studio loads its model and voices the way the speech server does (`dia2.api_server`): the
same model options, the same `VoiceStore` on the same folder (so a voice made here is one the
server serves, and the other way round), adapter voices loaded per request by the engine through
the server's `VoiceAdapters`.
"""

from __future__ import annotations

import functools
import hashlib
import html
import inspect
import logging
import random
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dia2.errors import Dia2Error
from dia2.generation.prefix import VoicePrefix
from dia2.studio.jobs import Job, JobStore

logger = logging.getLogger(__name__)

ScorerFactory = Callable[[Sequence[np.ndarray]], Any]
"""references (mono float32 waveforms of the target voice, maybe none) -> an object with
`score(waveform, sample_rate, text, *, timestamps, hit_frame_limit)` (dia2.evaluation.ClipScorer)."""


class StudioError(Dia2Error, ValueError):
    """A bad input in the page (empty script, no recording, bad seed...); shown as a message."""


class Studio:
    """The loaded studio: `tts`, `engine`, `voices` (VoiceStore), `adapters` (VoiceAdapters),
    `jobs` (JobStore), and the folders of its work. `on_job_end(studio, job) -> note`: what the
    studio does when a background job ends (the Adapt tab's `dia2.studio.adapt.job_ended`)."""

    def __init__(self, options: Any, on_job_end: Callable[[Studio, Job], str]) -> None:
        from dia2.launch.model import load_tts, offer_adapters
        from dia2.serving.engine import Engine
        from dia2.serving.voice_adapters import VoiceAdapters, load_stored_adapters
        from dia2.serving.prefix_maker import PrefixMaker
        from dia2.serving.voices import VoiceStore

        self.options = options
        m, s = options.model, options.studio
        self.tts = load_tts(m, "the studio runs")
        self.sample_rate = self.tts.codec.sample_rate
        self.engine = Engine(self.tts, options.engine)
        self._make_prefix = PrefixMaker(self.tts, s.whisper_model)
        self._voice_lock = threading.Lock()  # one transcription at a time: one Whisper, one codec
        self._heard: tuple[bytes, VoicePrefix] | None = None  # the last recording's prefix, before any transcript
        self.voices = VoiceStore(s.voices, self.make_prefix, sample_rate=self.sample_rate)
        offer_adapters(self.voices, s.adapter)
        self.adapters = VoiceAdapters(self.engine)
        self.voices.watch(self.adapters.changed)  # a replaced or deleted voice unloads its adapter, as in the server
        load_stored_adapters(self.voices, self.adapters)
        self.engine.start()
        self.random_demo = is_random_demo(m.source, self.tts.model.config)
        self.work = Path(s.work).resolve()  # jobs record absolute paths: a restart may spell --work otherwise
        for sub in ("corpora", "runs", "outputs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.jobs = JobStore(self.work / "jobs", functools.partial(on_job_end, self))

    def make_prefix(self, speaker_1: np.ndarray, speaker_2: np.ndarray | None = None,
                    transcript: str | None = None) -> VoicePrefix:
        """Transcribe and encode recordings (float32 mono [S] at the codec's rate) into a prefix,
        with `transcript`'s words in place of the heard ones, each timed from the heard words it
        matches or replaces (`with_transcript`). The last recording's result is kept: Voices
        transcribes, aligns the corrected transcript and then stores the same recording, and
        Whisper runs once for all three."""
        from dia2.generation.prefix import with_transcript

        key = hashlib.sha256(b"".join(np.ascontiguousarray(w, np.float32).tobytes() + b"|"
                                      for w in (speaker_1, speaker_2) if w is not None)).digest()
        with self._voice_lock:
            if self._heard is None or self._heard[0] != key:
                self._heard = (key, self._make_prefix(speaker_1, speaker_2))
            prefix = self._heard[1]
        return with_transcript(prefix, transcript) if transcript else prefix

    # --- the voices the tabs offer -------------------------------------------------------------

    def prefix_voices(self) -> list[str]:
        """Stored voices with a recording (a prefix), sorted."""
        return [v.name for v in self.voices.list() if v.prefix is not None]

    def adapter_voices(self) -> list[str]:
        """Stored voices with a LoRA adapter (trained here, given with --adapter, or the server's)."""
        return [v.name for v in self.voices.list() if v.adapter is not None]

    def stored_voice(self, name: str, kind: str) -> Any:
        """Stored voice `name` for a use needing a `kind` ("recording" or "adapter"): StudioError
        offering the voices of that kind when it has none, is unknown, or is one of the speech
        server's OpenAI alias names (no recording, no adapter: the studio never offers them)."""
        from dia2.serving.voices import VoiceNotFound

        offered = self.prefix_voices() if kind == "recording" else self.adapter_voices()
        choose = f"choose one of {', '.join(offered)}" if offered else (
            "make one in Voices first" if kind == "recording" else "train one in Adapt first")
        try:
            stored = self.voices.get(name)
        except VoiceNotFound:
            raise StudioError(f"no voice named '{name}': {choose}") from None
        if stored.builtin:
            what = "a recorded voice" if kind == "recording" else "an adapter"
            raise StudioError(f"'{name}' is one of the speech server's OpenAI voice names, not {what}: {choose}")
        if kind == "recording" and stored.prefix is None:
            raise StudioError(f"voice '{name}' has no recording, only an adapter: choose it as the Adapter, and "
                              f"for the speaker {choose}")
        if kind == "adapter" and stored.adapter is None:
            raise StudioError(f"voice '{name}' is not an adapter (it is a recorded voice: choose it for a speaker); "
                              f"for the adapter {choose}")
        return stored

    def adapter_key(self, name: str | None) -> str | None:
        """The engine's name for adapter voice `name` (None: no adapter)."""
        if not name:
            return None
        return self.adapters.key(self.stored_voice(name, "adapter"))  # loaded now if another server added it

    def add_adapter_voice(self, name: str, adapter: Path) -> None:
        """Serve a trained adapter as voice `name`, here and in the server's voices folder."""
        key = self.adapters.load(str(adapter))  # refused (wrong base...) before anything is stored
        try:
            stored = self.voices.add_adapter(name, str(adapter), replace=True)
        except BaseException:
            self.adapters.retire(key)
            raise
        self.adapters.bind(name, key, stored.revision)

    def job_choices(self) -> list[tuple[str, str]]:
        return [(job_label(j), j.id) for j in self.jobs.list()]

    def newest_job(self) -> str | None:
        jobs = self.jobs.list()
        return jobs[0].id if jobs else None


def is_random_demo(source: str, config: Any) -> bool:
    """Whether the studio speaks with the embedded tiny demo model (--tiny, or a folder of it):
    random, untrained weights, whose audio is noise. Known by its geometry, which only it has."""
    from dia2.model.assets import TINY_MODEL
    from dia2.model.config import parse_config
    from dia2.tiny import TINY_GEOMETRY

    return source == TINY_MODEL or config == parse_config(TINY_GEOMETRY)


def job_label(job: Job) -> str:
    return f"{job.title} ({job.status}) · {job.id}"


def shows_errors(fn: Callable) -> Callable:
    """A UI callback whose errors reach the page as a message, never a traceback: a user's error
    (Dia2Error) with its own message, anything else as one line naming the failure (logged whole)."""
    import gradio as gr

    def as_message(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        # The page renders a message as HTML: escaped, text such as '<none>' (PyAV's name for no
        # format) shows as written instead of vanishing as an unknown tag.
        if isinstance(exc, Dia2Error):
            return gr.Error(html.escape(str(exc), quote=False), print_exception=False)
        logger.exception("a studio callback failed")
        return gr.Error(html.escape(f"the studio failed: {type(exc).__name__}: {exc}", quote=False),
                        print_exception=False)

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a message in the page
                raise as_message(exc) from None

        return generator

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message in the page
            raise as_message(exc) from None

    return call


def parse_seed(text: str | float | None) -> int | None:
    """A seed typed in the page: empty is none (a random one), else an integer in [0, 2**63)."""
    value = str(text).strip() if text is not None else ""
    if not value:
        return None
    try:
        seed = int(float(value)) if float(value).is_integer() else None
    except ValueError:
        seed = None
    if seed is None or not 0 <= seed < 2**63:
        raise StudioError(f"seed {value!r} is not a whole number from 0 to 2**63-1: type one such as 42, or leave it "
                          "empty for a random one")
    return seed


def take_seed(text: str | float | None) -> int:
    """The seed a take uses: the one typed, or a random one (shown with the take, short enough to
    copy), so every take can be made again."""
    seed = parse_seed(text)
    return random.SystemRandom().randrange(2**31) if seed is None else seed


def read_recording(path: str | Path | None, sample_rate: int, label: str) -> tuple[bytes, np.ndarray]:
    """An uploaded or recorded file: its bytes and mono float32 waveform [S] at `sample_rate`,
    checked as the server checks a voice upload (decodable, 1-30 s, not silent, not clipped)."""
    from dia2.serving.voices import check_speech, decode_audio

    if not path:
        raise StudioError(f"{label}: no recording: upload a file or record one with the microphone")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StudioError(f"{label}: cannot read the upload ({exc}): upload it again") from exc
    audio = decode_audio(data, sample_rate, label)
    check_speech(audio, label)
    return data, audio.waveform
