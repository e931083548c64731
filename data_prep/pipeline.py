"""The data-prep run: recordings -> cached per-file results -> corpus, meta and QC report.

    from data_prep.config import PrepConfig
    from data_prep.pipeline import run_prep
    run_prep(PrepConfig(input=Path("recordings"), output=Path("corpus")))

`run_prep` refuses what it can before anything loads (`check_inputs`), then runs in this process
(`data_prep.work`: load, prepare each recording through the cache, write) or, under a launcher,
as one shard among several (`data_prep.shards`, which builds on the same steps). `check_run` is
the check-only run (`dia2-prep --check`): the same refusals, nothing written, and the files the
run would write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.audio import probe
from data_prep.cache import CACHE_DIR, FileCache
from data_prep.config import PrepConfig, PrepConfigError
from data_prep.distributed import ProcessGroup, launched_world_size
from data_prep.qc import JSON_FILE, TEXT_FILE
from data_prep.shards import run_sharded
from data_prep.sources import Sources, collect_sources
from data_prep.transcribe import SegmentTranscriber
from data_prep.work import (
    PrepModel,
    PrepOutcome,
    load_work,
    model_source,
    prepare_files,
    write_outputs,
)
from data_prep.writer import check_validation_folders
from dia2.audio.io import AudioFileError
from dia2.audio.recordings import is_audio_file
from dia2.data.corpus import META_FILE
from dia2.device import resolve_device
from dia2.output_paths import check_writable
from dia2.progress import PROGRESS_FILE


def check_output(folder: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written, or holds something other than a dia2-prep
    corpus (unless --overwrite)."""
    if folder.exists() and not folder.is_dir():
        raise PrepConfigError(f"output {folder} is a file: give a folder for the corpus")
    check_writable(folder, "output", folder=True)
    if not folder.exists() or not any(folder.iterdir()):
        return
    if (folder / CACHE_DIR).is_dir() or (folder / META_FILE).is_file():
        return  # an earlier run of ours: continue it, reusing what it prepared
    if not overwrite:
        shown = ", ".join(sorted(p.name for p in folder.iterdir())[:5])
        raise PrepConfigError(
            f"output folder {folder} exists and is not a dia2-prep corpus (it holds {shown} ...): choose a new folder, "
            "or pass --overwrite to write the corpus into it (its other files are left alone)"
        )


def check_audio(path: Path) -> None:
    """Refuse a single recording given as the input that holds no audio stream ffmpeg reads (in a
    folder, such a file is skipped and reported instead)."""
    try:
        probe(path)
    except AudioFileError as exc:
        raise PrepConfigError(f"input {path}: {exc}") from exc


def check_inputs(config: PrepConfig) -> Sources:
    """Refuse what can be refused before anything loads (options, the output folder, the
    recordings and their speakers); the recordings to prepare. Writes nothing."""
    config.validate()
    check_output(config.output, config.out.overwrite)
    if config.input.is_file() and is_audio_file(config.input):
        check_audio(config.input)
    sources = collect_sources(config.input, config.speaker, exclude=config.output)
    check_validation_folders([f.name for f in sources.files], config.out.validation_folders)
    return sources


def run_prep(config: PrepConfig, model: PrepModel | None = None, transcriber: SegmentTranscriber | None = None) -> PrepOutcome:
    """Prepare every recording (reusing cached ones), then write corpus, meta and QC report.

    model / transcriber: loaded from the config when not given (tests and benchmarks pass their
    own to load them once). Raises PrepConfigError for bad options or inputs, NothingKeptError
    when no utterance survives (the QC report is written first). Under a launcher (accelerate
    launch, torchrun: WORLD_SIZE > 1) each process prepares its shard and the main process writes
    the same corpus a single process would (data_prep/shards.py); every process returns it.
    """
    sources = check_inputs(config)
    if launched_world_size() > 1:
        return run_sharded(config, sources, model, transcriber, ProcessGroup.join())
    work = load_work(config, sources, model, transcriber)
    results, _, reused = prepare_files(work, sources.files, FileCache(config.output / CACHE_DIR), "recordings")
    return write_outputs(config, work, sources, results, {"files_from_cache": reused})


def check_run(config: PrepConfig) -> dict[str, Any]:
    """The check-only run (`dia2-prep --check`): every refusal `run_prep` makes before it loads a
    model, and the devices and model source it would load, checked; nothing written. Returns the
    files the run will write, by role, and how many recordings it will prepare."""
    sources = check_inputs(config)
    resolve_device(config.model.device, "--device")
    resolve_device(config.asr.asr_device, "--asr-device")
    model_source(config.model)
    out = config.output
    writes = {"corpus": out, "meta": out / META_FILE, "qc_report": out / JSON_FILE, "qc_text": out / TEXT_FILE,
              "progress": out / PROGRESS_FILE}
    return {"writes": {role: str(path.absolute()) for role, path in writes.items()}, "recordings": len(sources.files)}
