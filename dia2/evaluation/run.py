"""Speak every prompt with every configuration and seed, score every clip, and measure the toplines.

Configurations: `base`, `base+prefix` (with a voice prefix), and per adapter `NAME` (base +
adapter) and `NAME+prefix`. Toplines: the reference recordings themselves, and their Mimi
resynthesis (encode + decode through the model's codec: the best the codec lets any model
sound). A reference is compared with the voice of the *other* references (leave-one-out), so
the topline similarity is not a clip compared with itself.

The adapter-effect check runs first: for each adapter, the first prompt with the first seed,
with and without it. Identical codes mean the adapter changes nothing (never applied, or its
lora_B still zero as PEFT initialises it) and stop the evaluation with `AdapterEffectError`
before the long part. The report also counts identical clips over the whole matrix.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dia2.audio.io import resample, write_audio
from dia2.errors import Dia2Error
from dia2.evaluation.inputs import Reference
from dia2.evaluation.scoring import ClipScorer, ClipScores
from dia2.generation.config import GenerationConfig
from dia2.generation.prefix import VoicePrefix
from dia2.generation.tts import Dia2, GenerationResult
from dia2.model.adapters import load_adapter

if TYPE_CHECKING:
    from dia2.audio.codec import MimiCodec


Progress = Callable[[str], None]
"""Called once per clip scored, with the clip's label (the CLI's progress bar)."""
SCORE_FIELDS = ("wer", "cer", "similarity", "dnsmos", "duration_s", "duration_ratio", "leading_silence_s", "trailing_silence_s", "word_coverage")
"""Scores averaged over a configuration's clips (None values left out)."""


class AdapterEffectError(Dia2Error, RuntimeError):
    """An adapter whose outputs equal the base model's for the same seed: it was not applied, or is empty."""


@dataclass(frozen=True)
class Configuration:
    """One way of speaking: the base model, optionally with an adapter and/or the voice prefix."""

    name: str
    adapter: str | None = None
    prefix: bool = False


@dataclass(frozen=True)
class EvalSetup:
    """What to speak and how: prompts (Dia2 scripts), the seeds each is spoken with, and the
    generation settings (their seed is replaced by each of `seeds`)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    toplines: bool = True


@dataclass(frozen=True)
class Clip:
    """One scored clip: its group (a configuration, `references` or `resynthesis`), what it says,
    the seed, the audio file (relative to the report folder) and its scores."""

    group: str
    prompt_index: int | None
    text: str | None
    seed: int | None
    file: str
    scores: ClipScores

    def as_dict(self) -> dict[str, Any]:
        head = {"group": self.group, "prompt_index": self.prompt_index, "text": self.text, "seed": self.seed, "file": self.file}
        return {**head, **self.scores.as_dict(), "duration_ratio": self.scores.duration_ratio}


def configurations(adapters: dict[str, str], with_prefix: bool) -> list[Configuration]:
    """base (+prefix), then each adapter (label -> folder or repo id) alone (+prefix)."""
    configs = [Configuration("base")]
    if with_prefix:
        configs.append(Configuration("base+prefix", prefix=True))
    for label, adapter in adapters.items():
        configs.append(Configuration(label, adapter))
        if with_prefix:
            configs.append(Configuration(f"{label}+prefix", adapter, prefix=True))
    return configs


@contextmanager
def adapter_applied(tts: Dia2, adapter: str | None) -> Iterator[None]:
    """Within the block `tts` speaks with `adapter` (live LoRA layers, unmerged so that taking
    them out restores the base weights bit for bit); None: the base as it is."""
    if adapter is None:
        yield
        return
    handle = load_adapter(tts.model, adapter, merge=False)
    try:
        yield
    finally:
        handle.peft_model.unload()


class Evaluation:
    """One evaluation run writing its clips under `folder` (clips/GROUP/...) as it goes."""

    def __init__(
        self, tts: Dia2, setup: EvalSetup, scorer: ClipScorer, folder: Path,
        prefix: VoicePrefix | None = None, progress: Progress | None = None,
    ) -> None:
        self.tts, self.setup, self.scorer, self.folder = tts, setup, scorer, folder
        self.prefix, self.progress = prefix, progress
        self._spoken: dict[tuple[str, int, int], GenerationResult] = {}
        self._codes: dict[tuple[str, int, int], torch.Tensor] = {}
        self.generation_s = 0.0

    def run(self, adapters: dict[str, str], references: Sequence[Reference]) -> dict[str, Any]:
        """Every configuration x prompt x seed, then the toplines; returns the report's data."""
        configs = configurations(adapters, self.prefix is not None)
        self.check_adapter_effect([c for c in configs if c.adapter and not c.prefix])
        clips: list[Clip] = []
        for config in configs:
            with adapter_applied(self.tts, config.adapter):
                for p in range(len(self.setup.prompts)):
                    for seed in self.setup.seeds:
                        clips.append(self._clip(config, p, seed))
        toplines = self.toplines(references) if self.setup.toplines else []
        return {
            "configurations": [
                {**dataclasses.asdict(c), "aggregate": aggregate([x for x in clips if x.group == c.name])} for c in configs
            ],
            "clips": [c.as_dict() for c in clips],
            "toplines": {
                group: {"aggregate": aggregate([x for x in toplines if x.group == group]),
                        "clips": [x.as_dict() for x in toplines if x.group == group]}
                for group in ("references", "resynthesis")
            } if self.setup.toplines else {},
            "adapter_effect": [self._effect_record(c) for c in configs if c.adapter],
            "timing": {"generation_s": self.generation_s, **{f"{k}_s": v for k, v in self.scorer.seconds.items()}},
            "generated_audio_s": sum(c.scores.duration_s for c in clips),
        }

    def check_adapter_effect(self, configs: list[Configuration]) -> None:
        """Speak the first prompt with the first seed with and without each adapter; raise
        AdapterEffectError when the codes are identical. The clips are kept for the matrix."""
        if not configs:
            return
        seed = self.setup.seeds[0]
        base = self._speak(Configuration("base"), 0, seed)
        for config in configs:
            with adapter_applied(self.tts, config.adapter):
                adapted = self._speak(config, 0, seed)
            if torch.equal(base.audio_tokens, adapted.audio_tokens):
                raise AdapterEffectError(
                    f"adapter {config.adapter} changes nothing: with and without it, seed {seed} gives identical "
                    "audio codes. Its lora_B weights are probably all zero (PEFT's initial value: the adapter was "
                    "saved before training, or training never updated it); check the run's loss and pass the "
                    "trained adapter folder (runs/NAME/adapter)"
                )

    def _speak(self, config: Configuration, p: int, seed: int) -> GenerationResult:
        key = (config.name, p, seed)
        if key not in self._spoken:
            started = time.perf_counter()
            gen = dataclasses.replace(self.setup.generation, seed=seed)
            prefix = self.prefix if config.prefix else None
            self._spoken[key] = self.tts.generate(self.setup.prompts[p], gen, prefix=prefix)
            self.generation_s += time.perf_counter() - started
        return self._spoken[key]

    def _clip(self, config: Configuration, p: int, seed: int) -> Clip:
        result = self._speak(config, p, seed)
        del self._spoken[(config.name, p, seed)]  # the audio is on disk from here; keep only the codes
        self._codes[(config.name, p, seed)] = result.audio_tokens  # for the adapter-effect counts
        file = f"clips/{config.name}/p{p}_s{seed}.wav"
        write_audio(self.folder / file, result.waveform, result.sample_rate)
        scores = self.scorer.score(
            result.waveform, result.sample_rate, self.setup.prompts[p],
            timestamps=result.timestamps, hit_frame_limit=result.truncated,
        )
        self._tick(f"{config.name} p{p} s{seed}")
        return Clip(config.name, p, self.setup.prompts[p], seed, file, scores)

    def _effect_record(self, config: Configuration) -> dict[str, Any]:
        """How many of an adapter configuration's clips equal the same clip without the adapter."""
        base = "base+prefix" if config.prefix else "base"
        pairs = [(k, v) for k, v in self._codes.items() if k[0] == config.name]
        same = sum(torch.equal(v, self._codes[(base, k[1], k[2])]) for k, v in pairs)
        return {
            "configuration": config.name, "adapter": config.adapter, "compared_with": base,
            "clips": len(pairs), "identical_clips": same, "passed": same < len(pairs),
        }

    def toplines(self, references: Sequence[Reference]) -> list[Clip]:
        """Each reference as recorded and as the codec gives it back, scored like the clips."""
        rate = self.tts.codec.sample_rate
        clips = []
        for i, ref in enumerate(references):
            recorded = resample(ref.waveform, ref.sample_rate, rate)
            for group, wave in (("references", recorded), ("resynthesis", resynthesize(self.tts.codec, recorded))):
                file = f"clips/{group}/{ref.name}.wav"
                write_audio(self.folder / file, wave, rate)
                scores = self.scorer.score(wave, rate, ref.text or "", leave_out=i)
                if ref.text is None:  # no transcript: what was heard is kept, but there is nothing to score it against
                    scores = dataclasses.replace(scores, wer=None, cer=None)
                clips.append(Clip(group, None, ref.text, None, file, scores))
                self._tick(f"{group} {ref.name}")
        return clips

    def _tick(self, label: str) -> None:
        if self.progress is not None:
            self.progress(label)


@torch.inference_mode()
def resynthesize(codec: MimiCodec, waveform: np.ndarray) -> np.ndarray:
    """waveform [S] at the codec's rate through Mimi: codes [1, K, T], decoded back to [T * 1920]."""
    codes = codec.encode(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)))
    return codec.decode(codes)[0].float().clamp(-1, 1).cpu().numpy()


def total_clips(setup: EvalSetup, n_configs: int, n_references: int) -> int:
    """Clips an evaluation scores: every configuration x prompt x seed, plus two per reference."""
    return n_configs * len(setup.prompts) * len(setup.seeds) + (2 * n_references if setup.toplines else 0)


def aggregate(clips: Sequence[Clip]) -> dict[str, Any]:
    """Means of each score over `clips` (None where no clip has it), the similarity spread across
    seeds (per prompt, the standard deviation over its seeds; averaged over prompts), and how many
    clips hit the frame limit."""
    out: dict[str, Any] = {"clips": len(clips)}
    for name in SCORE_FIELDS:
        values = [v for c in clips if (v := getattr(c.scores, name)) is not None]
        out[name] = statistics.fmean(values) if values else None
    by_prompt: dict[int, list[float]] = {}
    for c in clips:
        if c.prompt_index is not None and c.scores.similarity is not None:
            by_prompt.setdefault(c.prompt_index, []).append(c.scores.similarity)
    spreads = [statistics.pstdev(v) for v in by_prompt.values() if len(v) > 1]
    out["similarity_spread"] = statistics.fmean(spreads) if spreads else None
    out["frame_limit_hits"] = sum(c.scores.hit_frame_limit for c in clips)
    return out
