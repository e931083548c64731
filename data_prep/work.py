"""What preparing recordings takes, loaded once per process, and the steps of a run that a single
process (`data_prep.pipeline.run_prep`) and each process of a launch (`data_prep.shards`) share:

    work = load_work(config, sources, model, transcriber)      # Mimi, tokenizer, Whisper, VAD/DNSMOS/diarizer, preparer
    results, keys, reused = prepare_files(work, files, cache, "recordings")
    outcome = write_outputs(config, work, sources, results, extra)   # corpus, meta, QC report

The model side (tokenizer, delays, context length, Mimi) comes from a Dia2 model repo or folder
as the runtime reads it (manifest, config assets, overrides), without its weights. Recordings are
prepared in sorted order, each result cached as soon as it is done; the corpus is assembled from
the cache in that same order, so a run killed at any point and started again writes the same
corpus as one that was never interrupted. The run's progress record (`dia2.progress`:
preparing N of M recordings, writing, done) is kept in the output folder for a program that
watches the run (the studio).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from data_prep.analysis import AnalysisModels
from data_prep.cache import (
    FileCache,
    entry_key,
    file_fingerprint,
    options_digest,
)
from data_prep.config import (
    CorpusModelOptions,
    PrepConfig,
    check_context_budget,
)
from data_prep.distributed import cpu_share
from data_prep.qc import JSON_FILE, TEXT_FILE, build_report, write_report
from data_prep.diarize import Diarizer
from data_prep.quality import quality_scorer
from data_prep.recording import RecordingPreparer
from data_prep.results import FAILED, FileResult, Skip
from data_prep.sources import SourceFile, Sources
from data_prep.speaker_clusters import DiarizeError
from data_prep.timing import StageTimer
from data_prep.transcribe import SegmentTranscriber, asr_transcriber
from data_prep.writer import assign_splits, push_corpus, write_corpus
from data_prep.vad import SpeechDetector
from dia2.audio.asr import AsrError
from dia2.console import is_main_process
from dia2.data.corpus import META_FILE, CorpusMeta
from dia2.data.teacher import tail_frames
from dia2.device import resolve_device
from dia2.errors import Dia2Error
from dia2.model.assets import ModelSource
from dia2.model.config import FRAME_RATE, DataConfig, load_config
from dia2.progress import PROGRESS_FILE, Phase, ProgressFile, progress_bar
from dia2.text.coverage import coverage_report, words_of_rows
from dia2.text.script import TextTokenIds
from dia2.text.tokenizer import load_tokenizer, tokenizer_fingerprint, tokenizer_source

logger = logging.getLogger(__name__)


class NothingKeptError(Dia2Error, RuntimeError):
    """Every recording or utterance was left out; the QC report says why."""


@dataclass(frozen=True)
class PrepModel:
    """What the corpus is built for: codec, tokenizer and the model's data config."""

    codec: Any  # dia2.audio.codec.MimiCodec
    codec_source: str
    tokenizer: Any
    tokenizer_source: str
    ids: TextTokenIds
    data: DataConfig
    max_context_steps: int


@dataclass(frozen=True)
class PrepOutcome:
    """Where the corpus went, and the QC report's figures."""

    folder: Path
    report: dict[str, Any]


def load_prep_model(options: CorpusModelOptions) -> PrepModel:
    """Tokenizer, config and Mimi of a Dia2 model repo or folder (`--tiny`: the embedded demo)."""
    # Imported here, with the model stack it brings (transformers): a run refuses a bad input first.
    from dia2.generation.tts import load_codec

    device = resolve_device(options.device, "--device")
    source = model_source(options)
    manifest = source.manifest()
    config = load_config(source.file(manifest.config))
    tok_source = options.tokenizer or tokenizer_source(source, manifest.tokenizer, config.assets.tokenizer)
    tokenizer = load_tokenizer(tok_source)
    mimi_source = options.mimi or source.asset(manifest.mimi) or config.assets.mimi
    dtype = torch.bfloat16 if options.codec_dtype == "bfloat16" else torch.float32
    codec = load_codec(mimi_source, options.mimi is not None, str(device), config.num_codebooks, dtype)
    ids = TextTokenIds.from_tokenizer(config.data, tokenizer)
    return PrepModel(
        codec, recorded_name(str(mimi_source), source), tokenizer, recorded_name(str(tok_source), source), ids,
        config.data, config.runtime.max_context_steps,
    )


def model_source(options: CorpusModelOptions) -> ModelSource:
    """The Dia2 model repo or folder the corpus is built for (`--tiny`: the embedded demo model)."""
    from dia2.tiny import model_source as named_source  # builds the tiny bundle: only when it is asked for

    return named_source(options.source)


def recorded_name(location: str, source: ModelSource | None = None) -> str:
    """How the corpus meta names an asset (codec, tokenizer, Whisper model): never a path of this
    machine, since the meta travels to the Hub with the corpus and the voices trained on it.

    Inside the model folder: `<model name>/<path inside>`; another local file or folder: its own
    name; a Hub repo id or a model name: as given.
    """
    path = Path(location).expanduser()
    if source is not None and source.is_local and path.is_relative_to(source.location):
        inside = path.relative_to(source.location).as_posix()
        return source.name if inside == "." else f"{source.name}/{inside}"
    return path.name if path.exists() else location


def recorded_identity(identity: str, model: str) -> str:
    """The recogniser's identity string (`WhisperTranscriber.identity`, which names a local model
    by its resolved path) with that path replaced by the model's recorded name."""
    path = Path(model).expanduser()
    if path.exists():
        identity = identity.replace(str(path.resolve()), recorded_name(model))
    return identity


@dataclass(frozen=True)
class PrepWork:
    """What preparing recordings needs, loaded once per process (`load_work`)."""

    model: PrepModel
    transcriber: SegmentTranscriber
    preparer: RecordingPreparer
    options: str  # options_digest: part of every cache key
    timer: StageTimer
    progress: bool  # show a progress bar
    record: ProgressFile  # the run's progress record (the main process's)


def load_work(config: PrepConfig, sources: Sources, model: PrepModel | None, transcriber: SegmentTranscriber | None) -> PrepWork:
    """The models (those not given, from the config), the preparer and the cache-key options of a run."""
    if transcriber is None:
        resolve_device(config.asr.asr_device, "--asr-device")  # refused before any model loads
    model = model or load_prep_model(config.model)
    tail = tail_frames(model.data)
    max_frames = check_context_budget(config.segment, model.max_context_steps, max(model.data.delays, default=0), tail)
    if transcriber is None:
        transcriber = asr_transcriber(config.asr, cpu_threads=config.run.threads or cpu_share())
        transcriber.load()  # a model that cannot load is the run's error, not every file's
    timer = StageTimer()
    names = sources.speaker_names
    models = load_analysis_models(config)
    preparer = RecordingPreparer(config, model.codec, model.tokenizer, model.ids, transcriber, names, max_frames, tail, timer, models)
    tokenizer_id = tokenizer_fingerprint(model.tokenizer)
    options = options_digest(config, model.codec.fingerprint, tokenizer_id, transcriber.identity, max_frames, names)
    config.output.mkdir(parents=True, exist_ok=True)
    record = ProgressFile(config.output / PROGRESS_FILE, "recording", enabled=is_main_process())
    return PrepWork(model, transcriber, preparer, options, timer, config.run.progress, record)


def load_analysis_models(config: PrepConfig) -> AnalysisModels:
    """silero-vad, DNSMOS and the diarizer, for the stages the config turns on, loaded now: a model
    that cannot load is the run's error, not every file's. DNSMOS runs on the cores Whisper and
    Mimi use, in turn with them (the stages run one after the other); the diarizer's speaker
    encoder on Mimi's --device."""
    diarize = config.speaker.diarize
    detector = SpeechDetector(config.vad) if config.vad.vad or diarize else None
    scorer = quality_scorer(config.quality, threads=config.run.threads or cpu_share()) if config.quality.min_dnsmos > 0 else None
    diarizer = Diarizer(config.diarization, detector, device=str(resolve_device(config.model.device, "--device"))) if diarize else None
    for model in (detector, scorer, diarizer):
        if model is not None:
            model.load()
    if diarizer is not None:
        for name, clip in config.speaker.enrollment.items():
            diarizer.embed_clip(clip)  # an enrollment clip without speech is refused before any recording
            logger.info("enrollment clip %s (%s) holds speech", clip, name)
    return AnalysisModels(detector, scorer, diarizer)


def prepare_files(
    work: PrepWork, files: Sequence[SourceFile], cache: FileCache, desc: str
) -> tuple[list[FileResult], list[str], int]:
    """Each file's result (from the cache, or prepared and cached), its cache key, and how many came from the cache."""
    results, keys, reused = [], [], 0
    work.record.write(Phase.PREPARING, 0, len(files))
    # On a terminal a bar; in a log or a pipe plain lines with a heartbeat (dia2.progress).
    with progress_bar(len(files), desc, "file", disable=not work.progress) as bar:
        for source in files:
            key = entry_key(source, file_fingerprint(source.path), work.options)
            result = cache.load(key)
            if result is None:
                result = _prepare(work.preparer, source, cache, key, work.timer)
            else:
                reused += 1
            results.append(result)
            keys.append(key)
            bar.update()
            bar.set_postfix(utterances=sum(len(r.rows) for r in results), reused=reused)
            work.record.write(Phase.PREPARING, len(results), len(files))
    return results, keys, reused


def _prepare(preparer: RecordingPreparer, source: SourceFile, cache: FileCache, key: str, timer: StageTimer) -> FileResult:
    """Prepare one recording and cache it; an unexpected error costs the file, not the run."""
    try:
        fresh = preparer.prepare(source)
    except (AsrError, DiarizeError):  # the recogniser, or an --enroll clip that names no voice: the run's error
        raise
    except Exception as exc:  # a bad file must not abort the run; the error is reported, and not cached
        logger.warning("%s failed: %s", source.name, exc, exc_info=logger.isEnabledFor(logging.INFO))
        return FileResult(source.name, skips=[Skip(source.name, FAILED, f"{type(exc).__name__}: {exc}")])
    _log_result(fresh)
    with timer.stage("write"):
        cache.store(key, fresh)
        # Assemble from what the cache holds, as a resumed run does, so both write the same corpus.
        return cache.load(key) or fresh


def write_outputs(config: PrepConfig, work: PrepWork, sources: Sources, results: list[FileResult], extra: dict[str, Any]) -> PrepOutcome:
    """Split, corpus, meta and QC report (`extra`: figures for the report) from every recording's result, in sorted order."""
    out, model, timer = config.output, work.model, work.timer
    work.record.write(Phase.WRITING, len(results), len(results))
    splits = assign_splits(
        [r.source for r in results if r.kept], config.out.validation_fraction, config.out.seed, config.out.validation_folders
    )
    extra = {**extra, "stage_seconds": timer.totals(), "output": str(out)}
    if not splits:
        write_report(build_report(results, sources.ignored, sources.speaker_names, splits, extra), out)
        whole = [s for r in results for s in r.skips if s.start is None][:3]
        why = "".join(f"; {s.source}: {s.reason} ({s.detail})" for s in whole)
        raise NothingKeptError(f"no utterance was kept from {len(results)} recording(s){why}: see {out / TEXT_FILE} for why")
    with timer.stage("write"):
        counts = write_corpus(out, results, splits, model.codec.num_codebooks)
        _meta(config, model, sources.speaker_names, counts, work.transcriber.identity).save(out)
    if "validation" not in counts and config.out.validation_fraction > 0:  # not when none was asked for
        logger.warning("the validation split is empty (%d recording(s) kept): the corpus has only a train split", len(splits))
    extra["stage_seconds"] = timer.totals()
    kept_words = words_of_rows([row for r in results for row in r.rows])
    extra["tokenizer_coverage"] = coverage_report(model.tokenizer, kept_words, config.asr.language).as_dict()
    report = build_report(results, sources.ignored, sources.speaker_names, splits, extra)
    write_report(report, out)
    if config.out.push_to_hub:
        push_corpus(out, config.out.push_to_hub, config.out.hub_private, [META_FILE, JSON_FILE, TEXT_FILE])
    work.record.write(Phase.DONE, len(results), len(results))
    return PrepOutcome(out, report)


def _meta(config: PrepConfig, model: PrepModel, speaker_names: tuple[str, ...], counts: dict[str, int], asr: str) -> CorpusMeta:
    return CorpusMeta(
        codec=model.codec_source,
        codec_fingerprint=model.codec.fingerprint,
        num_codebooks=model.codec.num_codebooks,
        tokenizer=model.tokenizer_source,
        tokenizer_fingerprint=tokenizer_fingerprint(model.tokenizer),
        frame_rate=FRAME_RATE,
        sample_rate=model.codec.sample_rate,
        delay_pattern=tuple(model.data.delays),
        asr_model=recorded_name(config.asr.asr_model),
        tool_version=tool_version(),
        extra={
            "asr": recorded_identity(asr, config.asr.asr_model),
            "speakers": list(speaker_names),
            "rows": counts,
            "max_context_steps": model.max_context_steps,
            "prefix_seconds": config.segment.prefix_seconds,
            "codec_dtype": config.model.codec_dtype,
            "language": config.asr.language,
            "stages": stages_record(config),
        },
    )


def stages_record(config: PrepConfig) -> dict[str, Any]:
    """The corpus meta's record of the stages that shaped its audio (None: a stage that was off)."""
    loudness, vad = config.loudness, config.vad
    return {
        "loudness": {"target_lufs": loudness.target_lufs, "ceiling_dbtp": loudness.ceiling_dbtp} if loudness.loudness else None,
        "vad": {"speech_pad_seconds": vad.speech_pad_seconds, "vad_threshold": vad.vad_threshold} if vad.vad else None,
        "dnsmos": {"min_ovrl": config.quality.min_dnsmos, "hop_seconds": config.quality.dnsmos_hop} if config.quality.min_dnsmos > 0 else None,
        "diarization": {"enrolled": sorted(config.speaker.enrollment)} if config.speaker.diarize else None,
    }


def tool_version() -> str:
    """This toolkit's installed version."""
    try:
        return metadata.version("dia2-toolkit")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _log_result(result: FileResult) -> None:
    skipped = ", ".join(f"{s.reason}" for s in result.skips) or "nothing"
    logger.info("%s: %d utterance(s) kept, skipped: %s", result.source, len(result.rows), skipped)
