"""The evaluation's inputs, each read and checked before anything is generated or written:
prompts (a file, or the shipped set), reference recordings (a folder), adapters (trained on this
base, and fitting it).

Each refusal is an `EvalInputError` naming the input and the fix, so `dia2-eval` fails before it
has loaded a recogniser or spoken a word, and leaves no output folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dia2.audio.io import AudioFileError, read_audio
from dia2.audio.recordings import AUDIO_EXTENSIONS, TranscriptError, find_recordings, read_transcript
from dia2.errors import Dia2Error
from dia2.generation.voice import VoiceError, read_voice, voice_file
from dia2.model.adapter_files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterError,
    read_adapter_json,
    resolve_adapter,
)
from dia2.model.assets import TINY_MODEL
from dia2.output_paths import check_writable
from dia2.text.script import SPEAKER_TAGS, ScriptError, check_script

if TYPE_CHECKING:
    from dia2.model.network import Dia2Model

DEFAULT_PROMPTS = "default.txt"


class EvalInputError(Dia2Error, ValueError):
    """An evaluation input (prompt file, reference folder, adapter, output folder) that cannot be used."""


@dataclass(frozen=True)
class Reference:
    """A recording of the target voice: mono waveform [S] at `sample_rate`, and its transcript if known."""

    name: str
    path: Path
    waveform: np.ndarray
    sample_rate: int
    text: str | None


def shipped_prompt_languages() -> tuple[str, ...]:
    """Languages with a shipped prompt set (dia2/evaluation/prompts/<lang>.txt; English is default.txt)."""
    folder = resources.files("dia2.evaluation").joinpath("prompts")
    return ("en", *sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt") and p.name != DEFAULT_PROMPTS))


def read_prompts(path: str | os.PathLike | None = None, language: str | None = None) -> list[str]:
    """Prompts, one a line (blank lines and # comments skipped); a line without a speaker tag is
    spoken by [S1]. None: the shipped set of `language` (dia2/evaluation/prompts/<lang>.txt;
    default.txt for English or no language)."""
    if path is None:
        name = DEFAULT_PROMPTS if language in (None, "en") else f"{language}.txt"
        if language not in (None, *shipped_prompt_languages()):
            raise EvalInputError(
                f"no shipped prompts in --language {language} (shipped: {', '.join(shipped_prompt_languages())}): write "
                "one prompt a line in that language and pass the file with --prompts"
            )
        text = resources.files("dia2.evaluation").joinpath("prompts", name).read_text(encoding="utf-8")
        where = f"the shipped prompt set ({name})"
    else:
        path = Path(path)
        if not path.is_file():
            raise EvalInputError(f"prompt file {path} not found: pass a text file with one prompt a line, or leave --prompts out for the shipped set")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EvalInputError(f"prompt file {path} cannot be read as UTF-8 text ({exc})") from exc
        where = str(path)
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise EvalInputError(f"prompt file {where} holds no prompts: write one prompt a line")
    prompts = [p if p.startswith(SPEAKER_TAGS) else f"[S1] {p}" for p in prompts]
    for i, prompt in enumerate(prompts, 1):
        try:
            check_script(prompt)  # a typo is refused before the model loads
        except ScriptError as exc:
            raise EvalInputError(f"prompt {i} ({prompt!r}) in {where} cannot be spoken: {exc}") from exc
    return prompts


def read_references(folder: str | os.PathLike, sample_rate: int) -> list[Reference]:
    """Every recording under `folder`, found as data prep finds recordings (recursively, the same
    formats, NAME.txt beside a recording is its transcript: `dia2.audio.recordings`), at
    `sample_rate`, sorted by path. A reference is named by its path relative to the folder,
    without the extension.

    Refused: a missing folder, one without recordings, two recordings of one name (a.wav and
    a.flac would share clips/references/a.wav and a.txt), and any recording or transcript that
    cannot be read (all of them named at once, so one pass fixes them all).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(f"reference folder {folder} not found: pass a folder of recordings of the target voice")
    found = find_recordings(folder).recordings
    if not found:
        shown = ", ".join(sorted(AUDIO_EXTENSIONS)[:8])
        raise EvalInputError(
            f"reference folder {folder} holds no recordings ({shown} ..., in it or its subfolders): "
            "add a few clips of the target voice"
        )
    _check_unique_names(folder, [r.path for r in found])
    references, unreadable = [], []
    for recording in found:
        try:
            wave = read_audio(recording.path, sample_rate)
        except AudioFileError as exc:
            unreadable.append(f"{recording.name} ({exc})")
            continue
        try:
            text = read_transcript(recording.transcript) if recording.transcript else None
        except TranscriptError as exc:
            unreadable.append(str(exc))
            continue
        name = recording.name[: -len(recording.path.suffix)] if recording.path.suffix else recording.name
        references.append(Reference(name, recording.path, wave, sample_rate, text))
    if unreadable:
        raise EvalInputError(
            f"reference folder {folder}: {len(unreadable)} file(s) cannot be read: {'; '.join(unreadable)}. "
            "Re-export recordings as wav or flac and save transcripts as UTF-8 text, or move them out of the folder"
        )
    return references


def where_found(references: Sequence[Reference], folder: Path) -> str:
    """How many references were found where, e.g. '3 recordings in refs: 1 at its top, 2 in day 1/'."""
    counts: dict[str, int] = {}
    for ref in references:
        where = ref.path.parent.relative_to(folder).as_posix()
        counts[where] = counts.get(where, 0) + 1
    parts = [f"{counts[w]} at its top" if w == "." else f"{counts[w]} in {w}/" for w in sorted(counts, key=lambda w: (w != ".", w))]
    return f"{len(references)} recordings in {folder}: {', '.join(parts)}"


def _check_unique_names(folder: Path, files: list[Path]) -> None:
    """Refuse two recordings of one name in one folder: their clips and their transcript would be one file."""
    by_stem: dict[Path, list[str]] = {}
    for path in files:
        by_stem.setdefault(path.with_suffix(""), []).append(path.name)
    clashes = [names for names in by_stem.values() if len(names) > 1]
    if clashes:
        listed = "; ".join(" and ".join(names) for names in clashes)
        raise EvalInputError(
            f"reference folder {folder}: {listed} share a name, so they would be written to one clip "
            "(clips/references/NAME.wav) and share one transcript (NAME.txt): rename or remove all but one of each"
        )


def check_adapters(model: Dia2Model, adapters: list[str]) -> None:
    """Refuse, before any generation, an adapter that is missing or was trained for another base."""
    from dia2.model.adapters import check_adapter_fits, read_adapter_config

    for adapter in adapters:
        try:
            folder = resolve_adapter(adapter)
            check_adapter_fits(model, folder / WEIGHTS_NAME, read_adapter_config(folder, adapter), adapter)
        except AdapterError as exc:
            raise EvalInputError(f"--adapter {adapter}: {exc}") from exc


def check_adapter_bases(adapters: list[str], model: str) -> None:
    """Refuse an adapter whose recorded base (adapter_config.json's base_model_name_or_path, or
    the base_model of the run that trained it, in the adapter folder's voice file) names another
    model than `model` (--model): one trained on another base of the same shape loads, but its
    scores would say nothing about either."""
    for adapter in adapters:
        try:
            folder = resolve_adapter(adapter)
            recorded = read_adapter_json(folder, adapter).get("base_model_name_or_path")
        except AdapterError as exc:
            raise EvalInputError(f"--adapter {adapter}: {exc}") from exc
        for base, where in ((recorded, CONFIG_NAME), *_run_base(folder)):
            if base and not _names_model(base, model):
                raise EvalInputError(
                    f"--adapter {adapter} was trained on base '{base}' (its {where} says so), not on --model {model}: "
                    f"pass --model {base}, or add --allow-other-base to evaluate it on {model} anyway"
                )


def _run_base(folder: Path) -> list[tuple[str, str]]:
    """The base the training run recorded in the adapter folder's voice (`dia2.generation.voice`),
    with the file that says so; none without a run record."""
    try:
        run = read_voice(folder).run or {}
    except VoiceError:
        return []  # optional, descriptive metadata: adapter_config.json is what loading checks
    base = run.get("base_model")
    return [(base, voice_file(folder).name)] if isinstance(base, str) else []


def _names_model(base: str, model: str) -> bool:
    """Whether a recorded base name is --model: the same name, or (--model a local folder) that
    folder recorded by its path, or a copy of the Hub repo it names (same last name part)."""
    if base == model:
        return True
    path = Path(model).expanduser()
    return model != TINY_MODEL and path.is_dir() and Path(base.rstrip("/")).name == path.resolve().name


def adapter_labels(adapters: list[str]) -> list[str]:
    """A short, unique, file-safe name per adapter: its folder (or repo) name, numbered on a clash."""
    labels: list[str] = []
    for adapter in adapters:
        name = re.sub(r"[^\w.-]+", "_", Path(str(adapter).rstrip("/")).name) or "adapter"
        label, n = name, 2
        while label in labels or label in ("base", "references", "resynthesis"):
            label, n = f"{name}-{n}", n + 1
        labels.append(label)
    return labels


def check_output(folder: Path) -> None:
    """Refuse an output folder that already holds files (a report is never written over another)
    or cannot be written."""
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EvalInputError(f"output {folder} already exists and is not empty: choose a new folder or remove it")
    check_writable(folder, "output", folder=True)
