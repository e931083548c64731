"""The Compare tab: one script and one seed spoken by several configurations side by side (base,
voice prefix, adapter, adapter + prefix), with Speak's sampling controls, and the evaluation's
scores for each when `dia2.evaluation` is installed (word error rate from Whisper, similarity to
the prefix's recording...), named in words with which way is better.

All configurations go to the engine at once, so they are generated in one batch; the engine
keys every draw by the seed, so each configuration's audio is what it would be alone. The clip
scorer (Whisper, the speaker encoder, the voice's embedded recordings) is built once per set of
reference recordings and kept for the next clicks.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dia2.studio.backend import (
    ScorerFactory,
    Studio,
    StudioError,
    shows_errors,
    take_seed,
)
from dia2.studio.speak import NO_VOICE, check_script, generation_config, sampling_controls, save_audio

logger = logging.getLogger(__name__)

CONFIGURATIONS = ("base", "prefix", "adapter", "adapter + prefix")
SCORES = {
    "duration_s": "length (s)",
    "wer": "word error rate (lower is better)",
    "cer": "character error rate (lower is better)",
    "similarity": "similarity to the voice (higher is better)",
    "word_coverage": "share of the script's words started in the clip (higher is better)",
    "leading_silence_s": "silence before the speech, s (lower is better)",
    "trailing_silence_s": "silence after the speech, s (lower is better)",
    "hit_frame_limit": "cut off at the length limit (no is better)",
    "transcript": "what speech recognition heard",
}
"""The evaluation's scores (ClipScores.as_dict keys) as the page names them, with which way is better."""


def default_scorer(whisper_model: str) -> ScorerFactory | None:
    """The evaluation's clip scorer with the studio's Whisper (None when dia2.evaluation is absent)."""
    try:
        from dia2.evaluation.scoring import ASR_OPTION, ClipScorer, ClipTranscriber
    except ImportError:
        return None
    # One Whisper (loaded at the first clip) for every scorer the cache keeps, one per voice.
    transcriber = ClipTranscriber(whisper_model, device="cpu", model_option=ASR_OPTION)
    return lambda references: ClipScorer(list(references) or None, asr=transcriber)


class ScorerCache:
    """The scorers a factory builds, one per set of reference waveforms, the last `size` kept:
    each click on Compare with the same voice reuses its scorer instead of loading Whisper and
    the speaker encoder again. `score` runs one clip set at a time (one Whisper, one encoder)."""

    def __init__(self, factory: ScorerFactory, size: int = 4) -> None:
        self.factory = factory
        self.size = size
        self._scorers: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    def score(self, references: Sequence[np.ndarray], results: dict[str, Any], script: str) -> dict[str, dict]:
        """Each result's scores as a dict (ClipScores.as_dict), against `references` (mono [S] each)."""
        key = hashlib.sha256(b"".join(np.ascontiguousarray(r, np.float32).tobytes() + b"|" for r in references)).digest()
        with self._lock:
            scorer = self._scorers.pop(key, None)
            if scorer is None:
                scorer = self.factory(references)
            self._scorers[key] = scorer  # newest last
            while len(self._scorers) > self.size:
                self._scorers.popitem(last=False)
            return {c: scorer.score(r.waveform, r.sample_rate, script, timestamps=r.timestamps,
                                    hit_frame_limit=r.truncated).as_dict() for c, r in results.items()}


def _references(studio: Studio, voice: str) -> list[np.ndarray]:
    """The recording(s) a stored voice was made from, as waveforms (similarity is measured against them)."""
    from dia2.serving.voices import decode_audio

    folder = Path(studio.voices.folder, voice)
    return [decode_audio(p.read_bytes(), studio.sample_rate, p.name).waveform for p in sorted(folder.glob("speaker_*.*"))]


def compare(studio: Studio, script: str, seed_text: str, voice: str | None, adapter: str | None,
            chosen: Sequence[str], cfg_scale: float, temperature: float, top_k: float, *,
            scorers: ScorerCache | None) -> tuple[Any, ...]:
    """Speak `script` once per chosen configuration, all with one seed (the one typed, or a random
    one, shown) and Speak's sampling settings; returns an audio path per CONFIGURATIONS entry (None
    where not chosen), the scores (a row per score, a column per configuration) and a status line."""
    from dia2.serving.requests import Request

    script = check_script(studio, script)[0]
    seed = take_seed(seed_text)
    chosen = [c for c in CONFIGURATIONS if c in (chosen or ())]
    if not chosen:
        raise StudioError(f"choose at least one configuration ({', '.join(CONFIGURATIONS)})")
    voice = voice if voice and voice != NO_VOICE else None
    adapter = adapter if adapter and adapter != NO_VOICE else None
    if voice is None and any("prefix" in c for c in chosen):
        raise StudioError("the prefix configurations need a voice: choose a stored voice (or untick them)")
    if adapter is None and any("adapter" in c for c in chosen):
        raise StudioError("the adapter configurations need an adapter: choose one (train it in Adapt), or untick them")
    prefix = studio.stored_voice(voice, "recording").prefix if voice else None
    key = studio.adapter_key(adapter)
    g = studio.options.generation
    config = generation_config(g, cfg_scale, temperature, top_k, seed, g.max_frames)
    handles = {}
    try:  # a refused submit (EngineFull) or a failed result stops the configurations already started too
        for c in chosen:
            handles[c] = studio.engine.submit(Request(script, config, prefix if "prefix" in c else None,
                                                      key if "adapter" in c else None))
        results = {c: h.result() for c, h in handles.items()}
    finally:
        for h in handles.values():
            h.cancel()
    paths = {c: save_audio(studio.work / "outputs", "compare-" + c.replace(" + ", "-"), r.waveform, r.sample_rate)
             for c, r in results.items()}
    rows, note = _scores(studio, script, results, voice, scorers)
    audio = [str(paths[c]) if c in paths else None for c in CONFIGURATIONS]
    return (*audio, rows, f"spoke {len(results)} configuration(s) with seed {seed}{note}")


def _scores(studio: Studio, script: str, results: dict, voice: str | None,
            scorers: ScorerCache | None) -> tuple[Any, str]:
    """A table with a row per score (named in words) and a column per configuration: the
    evaluation's scores, or just the length without them."""
    import pandas as pd

    def table(values: dict[str, dict[str, Any]]) -> Any:
        rows = [[label, *[_rounded(values[c].get(key)) for c in results]] for key, label in SCORES.items()
                if any(values[c].get(key) is not None for c in results)]
        return pd.DataFrame(rows, columns=["score", *results])

    lengths = {c: {"duration_s": r.duration} for c, r in results.items()}
    if scorers is None:
        return table(lengths), " (scores need dia2.evaluation, which is not installed)"
    try:
        scored = scorers.score(_references(studio, voice) if voice else [], results, script)
    except Exception as exc:  # the audio is worth showing without its scores; the page says why they are missing
        logger.exception("scoring failed")
        return table(lengths), f" (no scores: {type(exc).__name__}: {exc})"
    return table(scored), ""


def _rounded(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def build_compare_tab(studio: Studio, scorer_factory: ScorerFactory | None,
                      voice_choices: Callable[[], list[str]], adapter_choices: Callable[[], list[str]]) -> dict[str, Any]:
    import gradio as gr

    script = gr.Textbox(label="Script", lines=4, value="[S1] Hello there, how are you doing today?",
                        elem_id="compare-script")
    with gr.Row():
        seed = gr.Textbox(value="0", label="Seed (empty: random)", elem_id="compare-seed", min_width=160)
        voice = gr.Dropdown(voice_choices(), value=NO_VOICE, label="Voice (prefix)", elem_id="compare-voice",
                            allow_custom_value=True, min_width=160)
        adapter = gr.Dropdown(adapter_choices(), value=NO_VOICE, label="Adapter", elem_id="compare-adapter",
                              allow_custom_value=True, min_width=160)
    sampling = sampling_controls(studio.options.generation)
    chosen = gr.CheckboxGroup(list(CONFIGURATIONS), value=["base"], label="Configurations")
    button = gr.Button("Compare", variant="primary", elem_id="compare-run")
    with gr.Row():
        players = [gr.Audio(label=c, type="filepath", interactive=False, min_width=200) for c in CONFIGURATIONS]
    status = gr.Markdown(elem_id="compare-status")
    scores = gr.Dataframe(headers=["score", *CONFIGURATIONS], label="Scores (a column per configuration)",
                          interactive=False, elem_id="compare-scores", wrap=True)

    scorers = ScorerCache(scorer_factory) if scorer_factory is not None else None

    def run(*args: Any) -> tuple[Any, ...]:
        return compare(studio, *args, scorers=scorers)

    button.click(shows_errors(run), [script, seed, voice, adapter, chosen, *sampling], [*players, scores, status],
                 api_name="compare", concurrency_limit=studio.engine.config.slots)
    return {"voice": voice, "adapter": adapter}
