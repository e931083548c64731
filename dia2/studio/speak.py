"""The Speak tab: a script, a voice per speaker, an adapter and sampling, spoken on the serving
engine; the audio plays while it is generated, then comes whole, with its word timestamps.

A speaker's voice is a stored voice (its prefix) or a recording uploaded or recorded in the page.
The engine takes one prefix per request, speaker 1's words then speaker 2's, so two voices are
joined into one (`join_voices`); a recording is transcribed and encoded as the server does it.
"""

from __future__ import annotations

import dataclasses
import html
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dia2.generation.loop import GenerationConfig
from dia2.generation.voice import PrefixError, Voice
from dia2.studio.runtime import (
    Studio,
    StudioError,
    parse_seed,
    read_recording,
    shows_errors,
)

NO_VOICE = "(none)"
RECORDING = "(the recording below)"
STREAM_SECONDS = 0.4
"""Audio gathered before each streamed piece: fewer, larger pieces than one per 80 ms frame."""
EXAMPLE = "[S1] Hello there, how are you doing today?\n[S2] Very well, thank you. And you?"


def can_stream() -> bool:
    """Gradio encodes streamed audio with the ffmpeg program; without it the audio comes whole."""
    return shutil.which("ffmpeg") is not None


def join_voices(first: Voice, second: Voice) -> Voice:
    """One prefix of two single-speaker voices: `first`'s codes then `second`'s [K, P1 + P2], its
    words moved after `first`'s audio and spoken by speaker 2."""
    if first.codes.shape[0] != second.codes.shape[0] or first.codec_fingerprint != second.codec_fingerprint:
        raise PrefixError("the two speakers' voices were made with different Mimi codecs: make them again with this model")
    offset = first.codes.shape[-1] / 12.5  # Mimi frames are 80 ms; build_voice keeps each speaker on whole frames
    words = tuple(dataclasses.replace(w, start=w.start + offset, end=w.end + offset, speaker=2) for w in second.words)
    codes = np.concatenate([first.codes.numpy(), second.codes.numpy()], axis=-1)
    import torch

    # Two recordings: the prefix rule aligns speaker 2's as its own file, from first's end.
    return Voice(torch.from_numpy(codes), first.words + words, first.codec_fingerprint, first.codes.shape[-1])


def _stored_prefix(studio: Studio, name: str, speaker: int) -> Voice:
    stored = studio.voices.get(name)
    if stored.voice is None:
        raise StudioError(f"speaker {speaker}: voice '{name}' has no recording (it is an adapter): choose it as the adapter")
    return stored.voice


def speaker_voices(studio: Studio, choice_1: str | None, recording_1: str | None, choice_2: str | None,
                   recording_2: str | None) -> Voice | None:
    """The prefix for the chosen voices (None: no voice for either speaker)."""
    choice_1, choice_2 = choice_1 or NO_VOICE, choice_2 or NO_VOICE
    if choice_1 == NO_VOICE:
        if choice_2 != NO_VOICE:
            raise StudioError("speaker 2 has a voice but speaker 1 has none: the prefix starts with speaker 1, "
                              "so give speaker 1 a voice too (or swap the tags)")
        return None
    if choice_2 != NO_VOICE:
        stored_dialogue = choice_1 != RECORDING and studio.voices.get(choice_1).speakers == 2
        if stored_dialogue:
            raise StudioError(f"voice '{choice_1}' holds both speakers already: choose {NO_VOICE} for speaker 2")
    if choice_1 == RECORDING and choice_2 == RECORDING:
        waves = [read_recording(r, studio.sample_rate, f"speaker {i} recording")[1]
                 for i, r in ((1, recording_1), (2, recording_2))]
        return studio.make_voice(*waves)
    voices = []
    for speaker, choice, recording in ((1, choice_1, recording_1), (2, choice_2, recording_2)):
        if choice == NO_VOICE:
            continue
        if choice == RECORDING:
            wave = read_recording(recording, studio.sample_rate, f"speaker {speaker} recording")[1]
            voices.append(studio.make_voice(wave))
        else:
            voices.append(_stored_prefix(studio, choice, speaker))
    return voices[0] if len(voices) == 1 else join_voices(*voices)


def generation_config(base: GenerationConfig, cfg_scale: float, temperature: float, top_k: float,
                      seed: int | None) -> GenerationConfig:
    """The studio's defaults with the page's settings."""
    if top_k is None or float(top_k) != int(top_k):
        raise StudioError(f"top-k {top_k!r} is not a whole number: use e.g. 50 (0 keeps every token)")
    audio = dataclasses.replace(base.audio, temperature=float(temperature), top_k=int(top_k))
    return dataclasses.replace(base, audio=audio, cfg_scale=float(cfg_scale), seed=seed)


def save_audio(folder: Path, stem: str, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write a wav whole (temp name, then rename) and return its path."""
    from dia2.audio.io import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{time.monotonic_ns() % 10**6}.wav"
    temporary = path.with_name(f".{path.stem}.tmp.wav")
    write_audio(temporary, waveform, sample_rate)
    os.replace(temporary, path)
    return path


def check_script(studio: Studio, script: str | None) -> str:
    """The script, or StudioError/ScriptError naming what is wrong (before it takes a slot)."""
    script = (script or "").strip()
    if not script:
        raise StudioError("the script is empty: write turns such as [S1] Hello there. [S2] Hi!")
    studio.tts.parse(script)  # an unknown tag or a tag with no words is named here
    return script


def speak(studio: Studio, script: str, choice_1: str, recording_1: str | None, choice_2: str, recording_2: str | None,
          adapter: str | None, cfg_scale: float, temperature: float, top_k: float, seed_text: str) -> Iterator[tuple]:
    """Speak `script`; yields (streamed piece, a player of the whole audio, its file, word table, status).

    Streamed pieces are (rate, int16 [n]); the last yield carries the whole file and the table.
    """
    from dia2.serving.requests import Request

    script = check_script(studio, script)
    config = generation_config(studio.options.generation, cfg_scale, temperature, top_k, parse_seed(seed_text))
    voice = speaker_voices(studio, choice_1, recording_1, choice_2, recording_2)
    adapter_key = studio.adapter_key(adapter if adapter and adapter != NO_VOICE else None)
    handle = studio.engine.submit(Request(script, config, voice, adapter_key))
    streaming = can_stream()
    pieces: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    words: list[tuple[str, float]] = []
    try:
        for chunk in handle:
            words += chunk.words
            pieces.append(chunk.waveform)
            pending.append(chunk.waveform)
            if streaming and (sum(map(len, pending)) >= STREAM_SECONDS * studio.sample_rate or chunk.done):
                yield _pcm(studio.sample_rate, pending), None, None, None, f"speaking... {len(words)} word(s)"
                pending = []
    finally:
        handle.cancel()  # a closed page (generator closed) frees the slot
    waveform = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    path = save_audio(studio.work / "outputs", "speak", waveform, studio.sample_rate)
    table = [[word, round(start, 2)] for word, start in words]
    note = "" if streaming else " (install ffmpeg to hear the audio while it is generated)"
    status = f"done: {len(waveform) / studio.sample_rate:.2f} s, {len(words)} word(s){note}"
    yield None, player(path), str(path), table, status


def player(path: Path) -> str:
    """A plain HTML5 player of a generated file (served by Gradio from the studio's work folder)."""
    src = html.escape("gradio_api/file=" + urllib.parse.quote(str(path.resolve())))
    return f'<audio controls preload="metadata" src="{src}"></audio>'


def _pcm(rate: int, pieces: list[np.ndarray]) -> tuple[int, np.ndarray]:
    wave = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    return rate, (np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)


def voice_choices(studio: Studio) -> list[str]:
    return [NO_VOICE, RECORDING, *studio.prefix_voices()]


def adapter_choices(studio: Studio) -> list[str]:
    return [NO_VOICE, *studio.adapter_voices()]


def build_speak_tab(studio: Studio) -> dict[str, Any]:
    """The tab's components (inside a gr.Blocks); returns those other tabs refresh."""
    import gradio as gr

    g = studio.options.generation
    with gr.Row():
        with gr.Column(scale=3):
            script = gr.Textbox(label="Script", value=EXAMPLE, lines=6, elem_id="speak-script",
                                placeholder="[S1] Hello there. [S2] Hi!")
            with gr.Row():
                choices = voice_choices(studio)
                # Custom values pass: voices come and go in other pages and jobs; speak() names an unknown one.
                voice_1 = gr.Dropdown(choices, value=NO_VOICE, label="Speaker 1 voice", elem_id="speak-voice-1",
                                      allow_custom_value=True)
                voice_2 = gr.Dropdown(choices, value=NO_VOICE, label="Speaker 2 voice", elem_id="speak-voice-2",
                                      allow_custom_value=True)
            with gr.Row():
                recording_1 = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speaker 1 recording")
                recording_2 = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Speaker 2 recording")
            adapter = gr.Dropdown(adapter_choices(studio), value=NO_VOICE, label="Adapter", elem_id="speak-adapter",
                                  allow_custom_value=True)
            with gr.Accordion("Sampling", open=False):
                cfg = gr.Slider(1.0, 10.0, value=g.cfg_scale, step=0.5, label="CFG scale (1 = off)")
                temperature = gr.Slider(0.0, 2.0, value=g.audio.temperature, step=0.05, label="Audio temperature")
                top_k = gr.Slider(0, 200, value=g.audio.top_k, step=1, label="Audio top-k (0 = all)")
                seed = gr.Textbox(value="" if g.seed is None else str(g.seed), label="Seed (empty: random)",
                                  elem_id="speak-seed")
            button = gr.Button("Generate", variant="primary", elem_id="speak-generate")
        with gr.Column(scale=2):
            stream = gr.Audio(label="Playing as it is generated", streaming=True, autoplay=True, interactive=False,
                              visible=can_stream(), elem_id="speak-stream")
            full = gr.HTML(label="Generated audio", elem_id="speak-audio")
            download = gr.File(label="Download", interactive=False, elem_id="speak-file")
            status = gr.Markdown(elem_id="speak-status")
            words = gr.Dataframe(headers=["word", "start (s)"], label="Word timestamps", interactive=False,
                                 elem_id="speak-words")
    # A recording given for a speaker is that speaker's voice.
    recording_1.change(lambda r, v: RECORDING if r else v, [recording_1, voice_1], voice_1, api_visibility="private")
    recording_2.change(lambda r, v: RECORDING if r else v, [recording_2, voice_2], voice_2, api_visibility="private")

    @shows_errors
    def run(*args: Any) -> Iterator[tuple]:
        yield from speak(studio, *args)

    button.click(run, [script, voice_1, recording_1, voice_2, recording_2, adapter, cfg, temperature, top_k, seed],
                 [stream, full, download, words, status], api_name="speak",
                 concurrency_limit=studio.engine.config.slots)
    return {"voice_1": voice_1, "voice_2": voice_2, "adapter": adapter}
