"""A recording, analysed in one pass before it is transcribed: its exact length, its speech
(silero-vad), its quality window by window (DNSMOS) and, with --diarize, who speaks when.

    analyzer = RecordingAnalyzer(config, models, timer)
    analysis = analyzer.analyse(recording, "podcast.m4a")     # Analysis
    runs, barriers, skips = attribute_speakers(words, analysis.diarization, speaker_names)

The pass reads the recording once, in order, as 16 kHz mono blocks (the rate of silero-vad,
DNSMOS and the speaker encoder), never whole except for --diarize: clustering compares every
stretch of speech with every other, so the diarizer gets the whole recording at 16 kHz (230 MB an
hour). With VAD on, the speech regions refine every cut's boundaries (`data_prep.recording`); the
DNSMOS windows give every cut its score (`data_prep.quality.RecordingQuality`).

Words get their speakers from the diarisation's turns: each word goes to the turn it overlaps
most. A word that lies mostly in speech the diarisation cut out (two voices at once, or a burst
too short to tell whose voice it is) is left out, and the utterance is broken there: no cut
holds overlapping speech, and none guesses a speaker.

What the QC report says of a recording as a whole comes from here too: `recording_figures` (the
pass's findings), `CutLevels` (its kept cuts' loudness) and `recording_flags`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from data_prep.audio import Recording
from data_prep.config import PrepConfig
from data_prep.diarize import Diarization, Diarizer
from data_prep.loudness import LoudnessResult
from data_prep.quality import QualityWindows, RecordingQuality
from data_prep.results import OVERLAP, UNKNOWN_SPEAKER, Skip
from data_prep.timing import StageTimer
from data_prep.vad import FRAME_SAMPLES, VAD_RATE, SpeechDetector, SpeechRegion, speech_regions
from dia2.audio.dnsmos import DnsmosScorer
from dia2.text.words import SpokenWord

logger = logging.getLogger(__name__)

ANALYSIS_RATE = VAD_RATE
"""The analysis pass's rate: silero-vad's, DNSMOS's and resemblyzer's (16 kHz)."""
BLOCK_SAMPLES = 1875 * FRAME_SAMPLES
"""60 s blocks, a whole number of VAD frames."""
_NEAREST_TURN_SECONDS = 0.5  # a word in no turn and nothing cut out goes to a turn this near


@dataclass(frozen=True)
class AnalysisModels:
    """The models of the analysis pass, loaded once per process; None where the stage is off."""

    detector: SpeechDetector | None
    scorer: DnsmosScorer | None
    diarizer: Diarizer | None


@dataclass(frozen=True)
class Analysis:
    """What the pass found: the recording's `seconds`; its speech `regions` (None: no VAD ran);
    its DNSMOS `quality` windows (None: off); its `diarization` (None: not asked for)."""

    seconds: float
    regions: tuple[SpeechRegion, ...] | None
    quality: QualityWindows | None
    diarization: Diarization | None

    def speech_seconds(self) -> float | None:
        return sum(r.seconds for r in self.regions) if self.regions is not None else None


class RecordingAnalyzer:
    """The analysis pass with the run's options and models."""

    def __init__(self, config: PrepConfig, models: AnalysisModels, timer: StageTimer | None = None) -> None:
        self.config, self.models, self.timer = config, models, timer or StageTimer()

    def analyse(self, recording: Recording, label: str, speaker_names: Sequence[str] = ()) -> Analysis:
        """Read `recording` through once. DiarizeError (TooFewVoicesError: this recording's fault)
        when --diarize cannot tell its speakers apart."""
        detector, scorer, diarizer = self.models.detector, self.models.scorer, self.models.diarizer
        probabilities: list[np.ndarray] = []
        kept: list[np.ndarray] = []  # the whole recording, for the diarizer only
        quality = None
        if scorer is not None:
            target = self.config.loudness.target_lufs if self.config.loudness.loudness else None
            has_speech = _speech_test(probabilities, self.config) if detector is not None else (lambda start, end: True)
            quality = RecordingQuality(scorer, self.config.quality, target, has_speech)
        blocks = recording.blocks(ANALYSIS_RATE, BLOCK_SAMPLES)
        while True:
            with self.timer.stage("read"):
                block = next(blocks, None)
            if block is None:
                break
            if detector is not None:
                with self.timer.stage("vad"):
                    probabilities.append(detector.probabilities(block, ANALYSIS_RATE))
            if quality is not None:
                with self.timer.stage("dnsmos"):
                    quality.add(block)
            if diarizer is not None:
                kept.append(block)
        seconds = recording.seconds
        regions = None
        if detector is not None:
            probs = np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32)
            regions = tuple(speech_regions(probs, self.config.vad, seconds))
        windows = None
        if quality is not None:
            with self.timer.stage("dnsmos"):
                windows = quality.finish()
        diarization = None
        if diarizer is not None and seconds > 0:
            with self.timer.stage("diarize"):
                audio = np.concatenate(kept) if kept else np.zeros(0, np.float32)
                diarization = diarizer.diarize(audio[: round(seconds * ANALYSIS_RATE)], ANALYSIS_RATE, speaker_names,
                                               regions=regions, enrollment=self.config.speaker.enrollment, label=label)
        return Analysis(seconds, regions, windows, diarization)


def _speech_test(probabilities: list[np.ndarray], config: PrepConfig):
    """Whether seconds [start, end) hold at least `min_speech_seconds` of frames at or above the
    VAD threshold, from the probabilities computed so far (a window is scored only once the
    blocks under it have been through the VAD)."""
    frame = FRAME_SAMPLES / VAD_RATE
    least = max(1, round(config.vad.min_speech_seconds / frame))

    def has_speech(start: float, end: float) -> bool:
        probs = np.concatenate(probabilities) if probabilities else np.zeros(0, np.float32)
        window = probs[int(start / frame) : int(np.ceil(end / frame))]
        return int(np.count_nonzero(window >= config.vad.vad_threshold)) >= least

    return has_speech


def attribute_speakers(
    words: Sequence[SpokenWord], diarization: Diarization, speaker_names: Sequence[str], source: str
) -> tuple[list[list[SpokenWord]], list[tuple[float, float]], list[Skip]]:
    """Words (time order) -> runs of consecutive words that each have a speaker (1-based, in
    `speaker_names` order), the spans cut out between them (barriers no cut may cross), and the
    skips that report what was cut out (overlaps, speech of no known speaker)."""
    turns = diarization.turns
    cut_out = [(r.start, r.end, OVERLAP) for r in diarization.overlaps]
    cut_out += [(r.start, r.end, UNKNOWN_SPEAKER) for r in diarization.unassigned]
    runs: list[list[SpokenWord]] = [[]]
    barriers = [(start, end) for start, end, _ in cut_out]
    for word in words:
        speaker = _speaker_of(word, turns, cut_out, speaker_names)
        if speaker is None:
            barriers.append((word.start, word.end))
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(replace(word, speaker=speaker))
    skips = [Skip(source, reason, _cut_out_detail(reason, end - start), start, end) for start, end, reason in cut_out]
    return [run for run in runs if run], sorted(barriers), skips


def _speaker_of(word: SpokenWord, turns, cut_out, speaker_names: Sequence[str]) -> int | None:
    """The speaker number of the turn `word` overlaps most; None when it lies mostly in speech
    that was cut out, or in no turn and none near."""
    def overlap(start: float, end: float) -> float:
        return max(0.0, min(end, word.end) - max(start, word.start))

    best = max(turns, key=lambda t: overlap(t.start, t.end), default=None)
    in_turn = overlap(best.start, best.end) if best is not None else 0.0
    if max((overlap(start, end) for start, end, _ in cut_out), default=0.0) > in_turn:
        return None
    if in_turn == 0.0:  # a word of no length, or in a gap between turns: the nearest turn, if it is near
        middle = (word.start + word.end) / 2

        def distance(turn) -> float:
            return max(0.0, turn.start - middle, middle - turn.end)

        best = min(turns, key=distance, default=None)
        if best is None or distance(best) > _NEAREST_TURN_SECONDS:
            return None
    return speaker_names.index(best.speaker) + 1


def _cut_out_detail(reason: str, seconds: float) -> str:
    if reason == OVERLAP:
        return f"{seconds:.2f} s where two voices overlap, cut out (not guessed)"
    return f"{seconds:.2f} s of speech too short to tell whose voice it is, cut out"


def recording_figures(recording: Recording, analysis: Analysis) -> dict[str, Any]:
    """What the QC report shows of a recording as a whole (its level and gains are added from its cuts)."""
    figures: dict[str, Any] = {"peak_dbfs": _db(recording.peak), "clipped": round(recording.clipped, 6)}
    speech = analysis.speech_seconds()
    if speech is not None:
        figures["speech_fraction"] = round(speech / analysis.seconds, 4) if analysis.seconds else 0.0
    if analysis.quality is not None and (score := analysis.quality.mean()) is not None:
        figures["dnsmos"] = {"sig": round(score.sig, 3), "bak": round(score.bak, 3), "ovrl": round(score.ovrl, 3)}
    if analysis.diarization is not None:
        d = analysis.diarization
        figures["diarization"] = {
            "talk_seconds": d.talk_seconds,
            "turns": {name: sum(1 for t in d.turns if t.speaker == name) for name in d.speakers},
            "turn_confidence": {name: _mean([t.confidence for t in d.turns if t.speaker == name]) for name in d.speakers},
            "confidence": round(d.confidence, 3),
            "separation": round(d.separation, 3),
            "overlap_seconds": round(sum(r.seconds for r in d.overlaps), 3),
            "named_by": d.named_by,
            "enrollment_similarity": {k: round(v, 3) for k, v in d.enrollment_similarity.items()},
        }
    return figures


@dataclass
class CutLevels:
    """The loudness of a recording's kept cuts (`data_prep.loudness` results), for its line in the QC report."""

    results: list[LoudnessResult] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        heard = [r for r in self.results if math.isfinite(r.input_lufs)]
        if not heard:
            return {}
        power = float(np.mean([10 ** (r.input_lufs / 10) for r in heard]))  # the cuts' mean power, as one level
        gains = [r.gain_db for r in heard]
        out_power = float(np.mean([10 ** (r.output_lufs / 10) for r in heard]))
        return {
            "input_lufs": round(10 * math.log10(power), 2), "gain_db": {"min": round(min(gains), 2), "max": round(max(gains), 2)},
            "output_lufs": round(10 * math.log10(out_power), 2), "true_peak_dbtp": round(max(r.true_peak_dbtp for r in heard), 2),
            "limited_db": round(max(r.limited_db for r in heard), 2), "quiet": any(r.quiet for r in self.results),
            "excess_gain": any(r.excess_gain for r in heard),
        }


def recording_flags(figures: dict[str, Any], config: PrepConfig) -> list[str]:
    """What the QC report lists a recording for: clipped, very quiet, or needing a large gain."""
    flags, level, options = [], figures.get("loudness") or {}, config.loudness
    if figures.get("clipped", 0.0) > config.filters.max_clipped:
        flags.append(f"clipped: {figures['clipped']:.2%} of its samples at full scale (> --max-clipped {config.filters.max_clipped:g})")
    if level.get("quiet"):
        flags.append(f"very quiet: {level['input_lufs']:.1f} LUFS (< --quiet-lufs {options.quiet_lufs:g}); its gain lifts its noise too")
    if level.get("excess_gain"):
        flags.append(f"needed up to {level['gain_db']['max']:+.1f} dB of gain (> --max-gain-db {options.max_gain_db:g})")
    return flags


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def _db(level: float) -> float | None:
    return round(20 * float(np.log10(level)), 2) if level > 0 else None
