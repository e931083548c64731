"""The Speak tab: a script, a voice per speaker, an adapter and sampling, spoken on the serving
engine; the audio plays while it is generated (one player, which then gives way to the whole
file), with progress in words and the seed of every take, and a Stop button.

A speaker's voice is a stored voice (its prefix) or a recording uploaded or recorded in the page.
The engine takes one prefix per request, speaker 1's words then speaker 2's, so two speakers'
prefixes are joined into one (`join_prefixes`); a recording is transcribed and encoded as the
server does it.
"""

from __future__ import annotations

import dataclasses
import html
import os
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from dia2.generation.config import GenerationConfig
from dia2.generation.prefix import PrefixError, VoicePrefix
from dia2.model.config import FRAME_RATE
from dia2.studio.backend import (
    Studio,
    StudioError,
    read_recording,
    shows_errors,
    take_seed,
)

NO_VOICE = "(none)"
RECORDING = "(the recording below)"
STREAM_SECONDS = 0.4
"""Audio gathered before each streamed piece (and progress update): fewer, larger pieces than one per 80 ms frame."""
EXAMPLE = "[S1] Hello there, how are you doing today?\n[S2] Very well, thank you. And you?"


def can_stream() -> bool:
    """Gradio encodes streamed audio with the ffmpeg program; without it the audio comes whole."""
    return shutil.which("ffmpeg") is not None


def join_prefixes(first: VoicePrefix, second: VoicePrefix) -> VoicePrefix:
    """One prefix of two single-speaker prefixes: `first`'s codes then `second`'s [K, P1 + P2], its
    words moved after `first`'s audio and spoken by speaker 2."""
    if first.codes.shape[0] != second.codes.shape[0] or first.codec_fingerprint != second.codec_fingerprint:
        raise PrefixError("the two speakers' voices were made with different Mimi codecs: make them again with this model")
    offset = first.codes.shape[-1] / FRAME_RATE  # Mimi frames are 80 ms; build_prefix keeps each speaker on whole frames
    words = tuple(dataclasses.replace(w, start=w.start + offset, end=w.end + offset, speaker=2) for w in second.words)
    codes = np.concatenate([first.codes.numpy(), second.codes.numpy()], axis=-1)
    import torch

    # Two recordings: the prefix rule aligns speaker 2's as its own file, from first's end.
    return VoicePrefix(torch.from_numpy(codes), first.words + words, first.codec_fingerprint, first.codes.shape[-1])


def _stored(studio: Studio, name: str, speaker: int) -> Any:
    """Stored voice `name` with a recording, for `speaker` (StudioError naming the speaker otherwise)."""
    try:
        return studio.stored_voice(name, "recording")
    except StudioError as exc:
        raise StudioError(f"speaker {speaker}: {exc}") from None


def speaker_prefix(studio: Studio, choice_1: str | None, recording_1: str | None, choice_2: str | None,
                   recording_2: str | None) -> VoicePrefix | None:
    """The prefix for the chosen voices (None: no voice for either speaker)."""
    choice_1, choice_2 = choice_1 or NO_VOICE, choice_2 or NO_VOICE
    if choice_1 == NO_VOICE:
        if choice_2 != NO_VOICE:
            raise StudioError("speaker 2 has a voice but speaker 1 has none: the prefix starts with speaker 1, "
                              "so give speaker 1 a voice too (or swap the tags)")
        return None
    if choice_2 != NO_VOICE:
        stored_dialogue = choice_1 != RECORDING and _stored(studio, choice_1, 1).speakers == 2
        if stored_dialogue:
            raise StudioError(f"voice '{choice_1}' holds both speakers already: choose {NO_VOICE} for speaker 2")
    if choice_1 == RECORDING and choice_2 == RECORDING:
        waves = [read_recording(r, studio.sample_rate, f"speaker {i} recording")[1]
                 for i, r in ((1, recording_1), (2, recording_2))]
        return studio.make_prefix(*waves)
    prefixes = []
    for speaker, choice, recording in ((1, choice_1, recording_1), (2, choice_2, recording_2)):
        if choice == NO_VOICE:
            continue
        if choice == RECORDING:
            wave = read_recording(recording, studio.sample_rate, f"speaker {speaker} recording")[1]
            prefixes.append(studio.make_prefix(wave))
        else:
            prefixes.append(_stored(studio, choice, speaker).prefix)
    return prefixes[0] if len(prefixes) == 1 else join_prefixes(*prefixes)


def generation_config(base: GenerationConfig, cfg_scale: float, temperature: float, top_k: float,
                      seed: int | None, max_frames: int | None) -> GenerationConfig:
    """The studio's defaults with the page's settings (max_frames None: no limit)."""
    if top_k is None or float(top_k) != int(top_k):
        raise StudioError(f"top-k {top_k!r} is not a whole number: use e.g. 50 (0 keeps every token)")
    audio = dataclasses.replace(base.audio, temperature=float(temperature), top_k=int(top_k))
    return dataclasses.replace(base, audio=audio, cfg_scale=float(cfg_scale), seed=seed, max_frames=max_frames)


def frame_limit(max_seconds: float | None) -> int | None:
    """Max length (s) as a frame limit; 0 (or empty): none, the whole script, in parts if long."""
    if max_seconds in (None, ""):
        return None
    if float(max_seconds) < 0:
        raise StudioError(f"Max length {max_seconds} s is negative: give seconds, or 0 for the whole script")
    return round(float(max_seconds) * FRAME_RATE) or None


def save_audio(folder: Path, stem: str, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write a wav whole (temp name, then rename) and return its path."""
    from dia2.audio.io import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}.wav"
    temporary = path.with_name(f".{path.stem}.tmp.wav")
    write_audio(temporary, waveform, sample_rate)
    os.replace(temporary, path)
    return path


def check_script(studio: Studio, script: str | None) -> tuple[str, int]:
    """The script and how many words it speaks, or StudioError/ScriptError naming what is wrong
    (before it takes a slot)."""
    script = (script or "").strip()
    if not script:
        raise StudioError("the script is empty: write turns such as [S1] Hello there. [S2] Hi!")
    entries = studio.tts.parse(script)  # an unknown tag or a tag with no words is named here
    return script, sum(1 for e in entries if e.text)


def check_fits(studio: Studio, script: str, config: GenerationConfig, prefix: VoicePrefix | None) -> None:
    """Under a Max length, refuse a script that cannot fit it, in the page's words (the engine's
    message names the command line's --max-frames)."""
    from dia2.text.script import ScriptError

    if config.max_frames is None:
        return  # the whole script, in parts when it is long
    try:
        studio.tts.plan(studio.tts.parse(script), config, prefix, None)
    except ScriptError:
        raise StudioError(f"the script cannot be spoken within Max length ({config.max_frames / FRAME_RATE:g} s): "
                          "raise Max length (s), or set it to 0 to speak the whole script") from None


class Takes:
    """The takes being spoken, per page (Gradio session): Stop ends its own page's, never another's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[str, set[Any]] = {}

    @contextmanager
    def running(self, page: str, handle: Any) -> Iterator[None]:
        with self._lock:
            self._handles.setdefault(page, set()).add(handle)
        try:
            yield
        finally:
            with self._lock:
                self._handles[page].discard(handle)
                if not self._handles[page]:
                    del self._handles[page]

    def stop(self, page: str) -> int:
        """Cancel the page's takes (each ends at the next frame, keeping what it has spoken); how many."""
        with self._lock:
            handles = list(self._handles.get(page, ()))
        for handle in handles:
            handle.cancel()
        return len(handles)


CLEARED = (None, "", None, None, "starting...", "")
"""Speak's outputs at the start of a take: nothing of the last take stays on the page."""


def speak(studio: Studio, takes: Takes, page: str, script: str, choice_1: str, recording_1: str | None, choice_2: str,
          recording_2: str | None, adapter: str | None, cfg_scale: float, temperature: float, top_k: float,
          seed_text: str, max_seconds: float | None) -> Iterator[tuple]:
    """Speak `script`; yields (streamed piece, a player of the whole audio, its file, word table,
    status, seed used). The first yield clears the last take; streamed pieces are (rate, int16 [n]);
    the last yield carries the whole file, the table and how the take ended (done or stopped)."""
    from dia2.serving.requests import Request

    streaming = can_stream()
    yield (gr.update(value=None, visible=True) if streaming else gr.update(), *CLEARED[1:])
    script, total = check_script(studio, script)
    seed = take_seed(seed_text)
    config = generation_config(studio.options.generation, cfg_scale, temperature, top_k, seed, frame_limit(max_seconds))
    prefix = speaker_prefix(studio, choice_1, recording_1, choice_2, recording_2)
    check_fits(studio, script, config, prefix)
    adapter_key = studio.adapter_key(adapter if adapter and adapter != NO_VOICE else None)
    handle = studio.engine.submit(Request(script, config, prefix, adapter_key))
    pieces: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    words: list[tuple[str, float]] = []
    started, finished = time.monotonic(), False
    with takes.running(page, handle):
        try:
            for chunk in handle:
                words += chunk.words
                pieces.append(chunk.waveform)
                pending.append(chunk.waveform)
                finished = chunk.done
                if sum(map(len, pending)) >= STREAM_SECONDS * studio.sample_rate or chunk.done:
                    status = progress_line(len(words), total, time.monotonic() - started, seed)
                    piece = _pcm(studio.sample_rate, pending) if streaming else gr.update()
                    yield piece, gr.update(), None, None, status, str(seed)
                    pending = []
        finally:
            handle.cancel()  # a closed page (generator closed) frees the slot
    waveform = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    path = save_audio(studio.work / "outputs", "speak", waveform, studio.sample_rate)
    table = [[word, round(start, 2)] for word, start in words]
    ending = end_line(len(words), total, len(waveform) / studio.sample_rate, seed, stopped=not finished,
                      streaming=streaming)
    yield gr.update(visible=False) if streaming else gr.update(), player(path), str(path), table, ending, str(seed)


def progress_line(spoken: int, total: int, elapsed: float, seed: int) -> str:
    """Words spoken of the script's, and the time left at the pace so far."""
    left = f", about {round(elapsed * (total - spoken) / spoken)} s left" if 0 < spoken < total else ""
    return f"speaking: {spoken} of {total} words{left} · seed {seed}"


def end_line(spoken: int, total: int, seconds: float, seed: int, *, stopped: bool, streaming: bool) -> str:
    if stopped:
        return f"stopped after {spoken} of {total} words: {seconds:.2f} s kept · seed {seed}"
    short = " (Max length reached: raise it, or set 0, to hear the rest)" if spoken < total else ""
    note = "" if streaming else " (install ffmpeg to hear the audio while it is generated)"
    return f"done: {seconds:.2f} s, {spoken} of {total} words{short} · seed {seed}{note}"


def player(path: Path) -> str:
    """A plain HTML5 player of a generated file (served by Gradio from the studio's work folder),
    with a link to download it."""
    src = html.escape("gradio_api/file=" + urllib.parse.quote(str(path.resolve())))
    return (f'<audio controls preload="metadata" src="{src}"></audio> '
            f'<a href="{src}" download="{html.escape(path.name)}">Download</a>')


def _pcm(rate: int, pieces: list[np.ndarray]) -> tuple[int, np.ndarray]:
    wave = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return rate, (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)


def voice_choices(studio: Studio) -> list[str]:
    return [NO_VOICE, RECORDING, *studio.prefix_voices()]


def adapter_choices(studio: Studio) -> list[str]:
    return [NO_VOICE, *studio.adapter_voices()]


def build_speak_tab(studio: Studio) -> dict[str, Any]:
    """The tab's components (inside a gr.Blocks); returns those other tabs refresh."""
    g = studio.options.generation
    context_seconds = studio.tts.model.config.runtime.max_context_steps / FRAME_RATE
    with gr.Row():
        with gr.Column(scale=3, min_width=300):
            script = gr.Textbox(label="Script", value=EXAMPLE, lines=6, elem_id="speak-script",
                                placeholder="[S1] Hello there. [S2] Hi!")
            with gr.Row():
                choices = voice_choices(studio)
                # Custom values pass: voices come and go in other pages and jobs; speak() names an unknown one.
                voice_1 = gr.Dropdown(choices, value=NO_VOICE, label="Speaker 1 voice", elem_id="speak-voice-1",
                                      allow_custom_value=True, min_width=160)
                voice_2 = gr.Dropdown(choices, value=NO_VOICE, label="Speaker 2 voice", elem_id="speak-voice-2",
                                      allow_custom_value=True, min_width=160)
            with gr.Row():
                recording_1 = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speaker 1 recording",
                                       elem_id="speak-recording-1", min_width=160)
                recording_2 = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speaker 2 recording",
                                       elem_id="speak-recording-2", min_width=160)
            adapter = gr.Dropdown(adapter_choices(studio), value=NO_VOICE, label="Adapter", elem_id="speak-adapter",
                                  allow_custom_value=True)
            sampling = sampling_controls(g)
            with gr.Row():
                seed = gr.Textbox(value="" if g.seed is None else str(g.seed), label="Seed (empty: random)",
                                  elem_id="speak-seed", min_width=160)
                max_seconds = gr.Slider(0, context_seconds, step=0.1, label="Max length (s)",
                                        value=(g.max_frames or 0) / FRAME_RATE, elem_id="speak-max-seconds",
                                        info="0: the whole script (a long one is spoken in parts)", min_width=160)
            with gr.Row():
                button = gr.Button("Generate", variant="primary", elem_id="speak-generate", min_width=120)
                stop = gr.Button("Stop", variant="stop", elem_id="speak-stop", min_width=120)
        with gr.Column(scale=2, min_width=300):
            status = gr.Markdown(elem_id="speak-status")
            stream = gr.Audio(label="Playing as it is generated", streaming=True, autoplay=True, interactive=False,
                              visible=False, elem_id="speak-stream")
            full = gr.HTML(label="Generated audio", elem_id="speak-audio")
            with gr.Row():
                seed_used = gr.Textbox(label="Seed of this take", interactive=False, buttons=["copy"],
                                       elem_id="speak-seed-used", min_width=160)
                reuse = gr.Button("Use this seed", elem_id="speak-seed-reuse", min_width=120)
            words = gr.Dataframe(headers=["word", "start (s)"], label="Word timestamps", interactive=False,
                                 elem_id="speak-words")
            # The file, for API clients (the page links it beside the player).
            download = gr.File(label="Download", interactive=False, elem_id="speak-file", visible=False)
    # A recording given for a speaker is that speaker's voice; cleared, the speaker has none again.
    for recording, voice in ((recording_1, voice_1), (recording_2, voice_2)):
        recording.change(lambda r, v: RECORDING if r else (NO_VOICE if v == RECORDING else v), [recording, voice],
                         voice, api_visibility="private")
    takes = Takes()

    @shows_errors
    def run(script: str, voice_1: str, recording_1: str | None, voice_2: str, recording_2: str | None, adapter: str,
            cfg: float, temperature: float, top_k: float, seed: str, max_seconds: float,
            request: gr.Request) -> Iterator[tuple]:
        yield from speak(studio, takes, request.session_hash, script, voice_1, recording_1, voice_2, recording_2,
                         adapter, cfg, temperature, top_k, seed, max_seconds)

    def stop_takes(request: gr.Request) -> None:
        takes.stop(request.session_hash)

    button.click(run, [script, voice_1, recording_1, voice_2, recording_2, adapter, *sampling, seed, max_seconds],
                 [stream, full, download, words, status, seed_used], api_name="speak",
                 concurrency_limit=studio.engine.config.slots)
    stop.click(stop_takes, None, None, api_name="stop_speaking", concurrency_limit=None)
    reuse.click(lambda used, typed: used or typed, [seed_used, seed], seed, api_visibility="private")
    return {"voice_1": voice_1, "voice_2": voice_2, "adapter": adapter}


def sampling_controls(g: GenerationConfig) -> tuple[Any, Any, Any]:
    """CFG, temperature and top-k, in an accordion, as Speak and Compare show them."""
    with gr.Accordion("Sampling", open=False):
        cfg = gr.Slider(1.0, 10.0, value=g.cfg_scale, step=0.5, label="CFG scale (1 = off)")
        temperature = gr.Slider(0.0, 2.0, value=g.audio.temperature, step=0.05, label="Audio temperature")
        top_k = gr.Slider(0, 200, value=g.audio.top_k, step=1, label="Audio top-k (0 = all)")
    return cfg, temperature, top_k
