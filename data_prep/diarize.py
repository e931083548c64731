"""Diarisation of a mono dialogue: who speaks when, for N named speakers.

1. Speech regions come from the VAD (`data_prep.vad`).
2. Each region is cut into windows of `speaker_window_seconds` every `speaker_hop_seconds` (a
   region shorter than a window is one window of its own length; one shorter than
   `min_speaker_seconds` is too short to tell whose voice it is, and left unassigned); each
   window gets a speaker embedding from resemblyzer's GE2E encoder (1.6 s windows: the length of
   the partial utterances it was trained on).
3. The windows are clustered into N speakers (`data_prep.speaker_clusters`: average-linkage
   agglomerative clustering on cosine distance, a cut that sets outliers aside, then centroid
   refinement).
4. The speech is labelled in cells `speaker_hop_seconds` long: each cell's similarity to each
   speaker is the mean over the windows that cover it, and it goes to the most similar speaker unless it
   is cut out as overlap (below). Consecutive cells of one speaker, with nothing cut out between
   them, make a turn.
5. Clusters get names from enrollment clips (each clip's embedding is matched to a centroid by
   the Hungarian method; a clip that matches no speaker closely enough is an error naming it),
   and otherwise in order of first appearance.

Overlapping speech is detected from the embeddings and cut out, not guessed (energy or VAD
evidence cannot tell two voices from one loud one in a mono mix; an embedding can). A cell is cut
when either test says it is not one known voice alone:
- ambiguous: its scores lie near midway between its two most similar speakers. Its margin,
  (s1 - s2) / (1 - c1.c2) (1 at a centroid, 0 midway; c1.c2 is the cosine between the two
  centroids), is under `overlap_margin`. Two voices at comparable levels land here; so does a
  turn change with no pause (a cell or two: a fraction of a second is lost, and no word goes to
  the wrong speaker).
- impure: its similarity to its own speaker falls more than `max_similarity_drop` below that
  speaker's median. When one voice dominates an overlap, the embedding follows it (the margin
  stays high) but lies away from it: on the espeak fixtures, windows of one voice alone stay
  within 0.04 of their speaker's median (about 0.93); windows with a second voice under them
  fall 0.14 to 0.2 below. A laugh or music under speech lands here too. Only cells covered by
  full-length windows take this test: a region shorter than a window embeds less speech and sits
  further from every centroid (0.79 for a 0.8 s "Hello" whose voice's full windows score 0.95).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.speaker_clusters import DiarizeError, TooFewVoicesError, cluster_windows, match_enrollment, silhouette
from data_prep.vad import SpeechDetector, SpeechRegion
from dia2.audio.io import AudioFileError, decode_audio_file, resample
from dia2.evaluation.speaker import unit

logger = logging.getLogger(__name__)

EMBED_RATE = 16000  # resemblyzer's rate
_FRAMES_PER_SECOND = 100  # resemblyzer's mel frames (10 ms hop)
_VOLUME_DBFS = -30.0  # resemblyzer's training level: each region is brought to it before its mel
_BATCH_WINDOWS = 256  # windows per encoder call: an hour of speech is ~9000 windows
SAME_VOICE_COSINE = 0.85
"""Speaker centroids closer than this are likely one voice split in two (espeak fixtures: one voice
split in two 0.88, a female and a male voice 0.60)."""


@dataclass(frozen=True)
class DiarizeConfig:
    """Diarisation (--diarize): who speaks when in a mono dialogue, from speaker embeddings."""

    speaker_window_seconds: float = 1.6
    """Speaker-embedding window (seconds; resemblyzer was trained on 1.6 s)."""
    speaker_hop_seconds: float = 0.4
    """Step between windows, and the resolution of speaker changes (seconds)."""
    min_speaker_seconds: float = 0.5
    """Speech regions shorter than this are too short to embed and are left unassigned (seconds)."""
    overlap_margin: float = 0.3
    """Speech lying closer than this to midway between two speakers' voices (0 = midway, 1 = on
    a speaker's centroid) is taken for overlapping speech and cut out."""
    max_similarity_drop: float = 0.1
    """Speech whose cosine with its speaker's voice falls more than this below that speaker's
    median is taken for overlap (or another sound under the voice) and cut out."""
    min_enroll_similarity: float = 0.75
    """Cosine an enrollment clip must reach with its speaker's centroid (espeak fixtures: about
    0.9 for the same voice, 0.65 for another)."""

    def __post_init__(self) -> None:
        if not 0 < self.speaker_hop_seconds <= self.speaker_window_seconds:
            raise DiarizeError(
                f"the diarisation hop {self.speaker_hop_seconds} s must be positive and at most the window {self.speaker_window_seconds} s"
            )
        if not 0 < self.min_speaker_seconds <= self.speaker_window_seconds:
            raise DiarizeError(f"the shortest embedded region {self.min_speaker_seconds} s must lie in (0, {self.speaker_window_seconds}]")
        if not 0 <= self.overlap_margin < 1:
            raise DiarizeError(f"the overlap margin {self.overlap_margin} must lie in [0, 1)")
        if not 0 < self.max_similarity_drop <= 2:
            raise DiarizeError(f"the largest similarity drop {self.max_similarity_drop} must lie in (0, 2] (a cosine difference)")
        if not -1 <= self.min_enroll_similarity <= 1:
            raise DiarizeError(f"the enrollment similarity {self.min_enroll_similarity} is a cosine: give a value in [-1, 1]")


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch of speech (seconds), the speech it holds, and how sure the labelling
    is (the mean margin of its cells, 0 to 1)."""

    speaker: str
    start: float
    end: float
    speech_seconds: float
    confidence: float


@dataclass(frozen=True)
class Diarization:
    """Who speaks when. `turns` in time order; `overlaps`: speech between two voices, cut out;
    `unassigned`: speech too short to embed; `talk_seconds`: each speaker's speech; `confidence`:
    the silhouette of the window clustering (cosine; 1 well apart, 0 indistinct); `separation`:
    the cosine between the two most alike speakers' centroids; `named_by`: for each speaker,
    "enrollment" or "first appearance"; `enrollment_similarity`: each enrolled clip's cosine with
    its speaker's centroid."""

    speakers: tuple[str, ...]
    turns: tuple[Turn, ...]
    overlaps: tuple[SpeechRegion, ...]
    unassigned: tuple[SpeechRegion, ...]
    talk_seconds: dict[str, float]
    confidence: float
    separation: float
    named_by: dict[str, str]
    enrollment_similarity: dict[str, float]


@dataclass(frozen=True)
class _Windows:
    """Window embeddings [W, D] (unit rows) and each window's span (seconds) and region index."""

    embeddings: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    region: np.ndarray


class Diarizer:
    """Speaker embeddings (resemblyzer, loaded on first use) + clustering + naming."""

    def __init__(self, config: DiarizeConfig = DiarizeConfig(), detector: SpeechDetector | None = None, device: str = "cpu") -> None:
        self.config = config
        self.detector = detector or SpeechDetector()
        self.device = device
        self._encoder = None

    def load(self):
        if self._encoder is None:
            from dia2.evaluation.speaker import ResemblyzerEncoder, SpeakerError

            try:
                self._encoder = ResemblyzerEncoder(self.device).load()
            except SpeakerError as exc:
                raise DiarizeError(
                    "diarisation needs the resemblyzer speaker encoder: pip install 'dia2-toolkit[eval]' "
                    f"(resemblyzer, webrtcvad-wheels) ({exc.__cause__ or exc})"
                ) from exc
        return self._encoder

    def diarize(
        self,
        waveform: np.ndarray,
        sample_rate: int,
        speakers: Sequence[str],
        regions: Sequence[SpeechRegion] | None = None,
        enrollment: Mapping[str, str | Path] | None = None,
        label: str = "the recording",
    ) -> Diarization:
        """Mono [S] at `sample_rate` -> its turns among `speakers` (two or more names).

        `regions`: its speech (default: found with the VAD). `enrollment`: name -> a short clip of
        that speaker alone (any container); names without a clip are given in order of first
        appearance. DiarizeError (naming `label` or the clip) for fewer than two speakers, a
        clip that matches no speaker, or too little speech to tell N voices apart.
        """
        speakers = check_speakers(speakers, enrollment)
        audio = resample(np.asarray(waveform, dtype=np.float32), sample_rate, EMBED_RATE)
        if regions is None:
            regions = self.detector.regions(audio, EMBED_RATE)
        regions = list(regions)
        windows = self._embed(audio, regions)
        if len(windows.embeddings) < 2 * len(speakers):
            raise TooFewVoicesError(
                f"{label} holds too little speech to tell {len(speakers)} speakers apart "
                f"({len(windows.embeddings)} windows of {self.config.speaker_window_seconds:g} s): give a longer recording"
            )
        centroids, labels = cluster_windows(windows.embeddings, len(speakers), label)
        order, similarity = self._name_clusters(centroids, windows, labels, speakers, enrollment or {})
        result = self._label(regions, windows, centroids, labels, speakers, order, similarity)
        logger.info("%s: %d turns, %.1f s of overlap cut out, talk %s, silhouette %.2f, closest voices %.2f cosine",
                    label, len(result.turns), sum(o.seconds for o in result.overlaps), result.talk_seconds,
                    result.confidence, result.separation)
        if result.separation > SAME_VOICE_COSINE:
            logger.warning("%s: two of the %d speakers sound alike (centroid cosine %.2f): check how many speakers it holds",
                           label, len(speakers), result.separation)
        return result

    def embed_clip(self, path: str | Path) -> np.ndarray:
        """The voice of a clip of one speaker (any container): the unit mean of its windows' embeddings [D]."""
        try:
            audio = decode_audio_file(path, EMBED_RATE).waveform
        except AudioFileError as exc:
            raise DiarizeError(f"enrollment clip {path}: {exc}") from exc
        windows = self._embed(audio, self.detector.regions(audio, EMBED_RATE))
        if len(windows.embeddings) == 0:
            raise DiarizeError(
                f"enrollment clip {path} holds no speech long enough to embed (>= {self.config.min_speaker_seconds:g} s): "
                "give a few seconds of the speaker talking alone"
            )
        return unit(windows.embeddings.mean(axis=0))

    def _embed(self, audio: np.ndarray, regions: Sequence[SpeechRegion]) -> _Windows:
        """Embeddings of every window of every region long enough (16 kHz audio [S])."""
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        encoder = self.load()
        size = round(self.config.speaker_window_seconds * _FRAMES_PER_SECOND)
        hop = round(self.config.speaker_hop_seconds * _FRAMES_PER_SECOND)
        mels, spans = [], []
        for index, region in enumerate(regions):
            if region.seconds < self.config.min_speaker_seconds:
                continue
            piece = audio[round(region.start * EMBED_RATE) : round(region.end * EMBED_RATE)]
            mel = wav_to_mel_spectrogram(_at_level(piece, _VOLUME_DBFS))
            for first in _window_starts(len(mel), size, hop):
                mels.append(mel[first : first + size])
                end = region.start + (first + len(mels[-1])) / _FRAMES_PER_SECOND
                spans.append((region.start + first / _FRAMES_PER_SECOND, end, index))
        embeddings = np.zeros((len(mels), 256), np.float64)
        with torch.no_grad():
            for length in sorted({len(m) for m in mels}):
                same = [i for i, m in enumerate(mels) if len(m) == length]
                for rows in (same[i : i + _BATCH_WINDOWS] for i in range(0, len(same), _BATCH_WINDOWS)):
                    batch = torch.from_numpy(np.stack([mels[i] for i in rows])).to(self.device)
                    embeddings[rows] = encoder(batch).cpu().numpy()
        spans_array = np.array(spans, dtype=np.float64).reshape(-1, 3)
        return _Windows(embeddings, spans_array[:, 0], spans_array[:, 1], spans_array[:, 2].astype(int))

    def _name_clusters(self, centroids, windows, labels, speakers, enrollment) -> tuple[list[int], dict[str, float]]:
        """order[i] = the cluster speakers[i] names (enrolled names by their clips, the rest by first
        appearance), and each enrolled clip's cosine with its cluster's centroid."""
        order: dict[str, int] = {}
        voices = {name: self.embed_clip(path) for name, path in enrollment.items()}
        if voices:
            order.update(match_enrollment(voices, centroids, self.config.min_enroll_similarity, enrollment))
        claimed = set(order.values())
        first_seen = [int(c) for c in dict.fromkeys(labels[np.argsort(windows.starts, kind="stable")]) if c not in claimed]
        first_seen += [c for c in range(len(centroids)) if c not in claimed and c not in first_seen]
        for name in speakers:
            if name not in order:
                order[name] = first_seen.pop(0)
        similarity = {name: float(voice @ centroids[order[name]]) for name, voice in voices.items()}
        return [order[name] for name in speakers], similarity

    def _label(self, regions, windows, centroids, labels, speakers, order, similarity) -> Diarization:
        """Cells -> turns (broken wherever speech was cut out), overlaps and figures."""
        name_of = {cluster: speakers[i] for i, cluster in enumerate(order)}
        cells = _cells(regions, windows, centroids, labels, self.config)
        overlaps = [SpeechRegion(c.start, c.end) for c in cells if not c.clear]
        unassigned = [r for r in regions if r.seconds < self.config.min_speaker_seconds]
        # Time-ordered speech: labelled cells, and None where speech was cut out (a turn breaks there).
        spans = [(c.start, c.end, name_of[c.cluster] if c.clear else None, c.margin) for c in cells]
        spans += [(r.start, r.end, None, 0.0) for r in unassigned]
        turns = _merge_turns(sorted(spans, key=lambda s: s[0]))
        pairs = centroids @ centroids.T
        return Diarization(
            speakers=tuple(speakers),
            turns=tuple(turns),
            overlaps=tuple(_merge_regions(overlaps)),
            unassigned=tuple(unassigned),
            talk_seconds={name: round(sum(t.speech_seconds for t in turns if t.speaker == name), 3) for name in speakers},
            confidence=silhouette(windows.embeddings, labels),
            separation=float(max(pairs[i, j] for i in range(len(pairs)) for j in range(i + 1, len(pairs)))),
            named_by={name: "enrollment" if name in similarity else "first appearance" for name in speakers},
            enrollment_similarity=similarity,
        )


def check_speakers(speakers: Sequence[str], enrollment: Mapping[str, object] | None = None) -> list[str]:
    """The speaker names, checked: two or more, distinct, and every enrolled name among them."""
    names = [str(s).strip() for s in speakers]
    if len(names) < 2:
        given = ",".join(names) or "none"
        raise DiarizeError(
            f"diarisation needs at least two speaker names, got {given}: give --speakers alice,bob "
            "(a recording of one speaker needs no diarisation)"
        )
    if any(not n for n in names) or len(set(names)) != len(names):
        raise DiarizeError(f"speaker names must be distinct and non-empty, got {','.join(names)}")
    unknown = [n for n in (enrollment or {}) if n not in names]
    if unknown:
        raise DiarizeError(
            f"enrollment names {', '.join(unknown)} are not among the speakers {','.join(names)}: enroll the speakers you name"
        )
    return names


def parse_enrollment(specs: Sequence[str], speakers: Sequence[str]) -> dict[str, Path]:
    """`["alice=alice.wav", ...]` (the --enroll flag) -> {name: path}, each name one of `speakers`
    and each file present."""
    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise DiarizeError(f"--enroll {spec!r} is not NAME=FILE: give e.g. --enroll alice=alice.wav")
        if name in out:
            raise DiarizeError(f"--enroll names {name} twice: give one clip per speaker")
        if not Path(path).expanduser().is_file():
            raise DiarizeError(f"--enroll {name}={path}: no such file")
        out[name] = Path(path).expanduser()
    check_speakers(speakers, out)
    return out


def _window_starts(frames: int, size: int, hop: int) -> list[int]:
    """First frames of the windows over a region of `frames` frames: every `hop`, the last ending
    at the region's end (one window of the region's own length when it is shorter than `size`)."""
    if frames <= size:
        return [0]
    starts = list(range(0, frames - size + 1, hop))
    if starts[-1] + size < frames:
        starts.append(frames - size)
    return starts


@dataclass(frozen=True)
class _Cell:
    """A `speaker_hop_seconds` stretch of speech: its most similar cluster, its margin between that
    and the runner-up (1 on the centroid, 0 midway), and whether it is one voice alone (kept)."""

    start: float
    end: float
    cluster: int
    margin: float
    clear: bool


def _cells(regions, windows: _Windows, centroids: np.ndarray, labels: np.ndarray, config: DiarizeConfig) -> list[_Cell]:
    """The cells of every embedded region, in time order."""
    similarity = windows.embeddings @ centroids.T  # [W, N]
    full = windows.ends - windows.starts >= config.speaker_window_seconds - 1e-6
    typical = [np.median(similarity[full & (labels == k), k]) if np.any(full & (labels == k)) else -1.0 for k in range(len(centroids))]
    out = []
    for index, region in enumerate(regions):
        mine = np.flatnonzero(windows.region == index)
        if len(mine) == 0:
            continue
        edges = np.append(np.arange(region.start, region.end - 1e-6, config.speaker_hop_seconds), region.end)
        for start, end in zip(edges[:-1], edges[1:]):
            middle = (start + end) / 2
            cover = mine[(windows.starts[mine] <= middle) & (windows.ends[mine] >= middle)]
            if len(cover) == 0:  # a region's tail past its last window's middle
                cover = mine[[np.argmin(np.abs((windows.starts[mine] + windows.ends[mine]) / 2 - middle))]]
            scores = similarity[cover].mean(axis=0)
            cluster, margin = _margin(scores, centroids)
            impure = bool(full[cover].all()) and scores[cluster] < typical[cluster] - config.max_similarity_drop
            out.append(_Cell(float(start), float(end), cluster, margin, margin >= config.overlap_margin and not impure))
    return out


def _margin(scores: np.ndarray, centroids: np.ndarray) -> tuple[int, float]:
    """The most similar cluster, and where the scores lie between it and the runner-up (1 on it, 0 midway)."""
    ranked = np.argsort(scores)[::-1]
    best, second = int(ranked[0]), int(ranked[1])
    spread = 1.0 - float(centroids[best] @ centroids[second])
    return best, float(np.clip((scores[best] - scores[second]) / max(spread, 1e-6), 0.0, 1.0))


def _merge_turns(spans: list[tuple[float, float, str | None, float]]) -> list[Turn]:
    """Time-ordered (start, end, speaker or None, margin) -> turns: runs of one speaker's spans
    with nothing cut out (None) between them."""
    turns: list[Turn] = []
    run: list[tuple[float, float, str | None, float]] = []
    for span in spans + [(math.inf, math.inf, None, 0.0)]:
        if run and span[2] != run[-1][2]:
            speech = sum(end - start for start, end, _, _ in run)
            confidence = sum((end - start) * m for start, end, _, m in run) / speech if speech > 0 else 0.0
            turns.append(Turn(run[0][2], run[0][0], run[-1][1], round(speech, 3), round(confidence, 3)))
            run = []
        if span[2] is not None:
            run.append(span)
    return turns


def _merge_regions(regions: list[SpeechRegion]) -> list[SpeechRegion]:
    out: list[SpeechRegion] = []
    for r in regions:
        if out and r.start <= out[-1].end + 1e-6:
            out[-1] = SpeechRegion(out[-1].start, max(out[-1].end, r.end))
        else:
            out.append(r)
    return out


def _at_level(piece: np.ndarray, dbfs: float) -> np.ndarray:
    rms = float(np.sqrt(np.mean(piece.astype(np.float64) ** 2))) if piece.size else 0.0
    return piece if rms == 0 else (piece * (10 ** (dbfs / 20) / rms)).astype(np.float32)
