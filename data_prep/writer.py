"""Writing the corpus: the seeded split by recording, the `datasets` folder, the Hub upload.

The folder is what `datasets.load_from_disk` reads (a `DatasetDict` with `train` and, when any
recording is held out, `validation`), with the columns of `dia2.data.corpus`. Rows stream into Arrow
files one by one, then the finished dataset replaces the previous one in the output folder only
once it is complete, so a run killed while writing leaves the old corpus (or none), never a mix.

An empty split is left out rather than written: `datasets` (5.2) saves an empty split without
an Arrow shard and then cannot load it back.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from data_prep.config import PrepConfigError
from data_prep.results import FileResult
from dia2.data.corpus import SPLITS, corpus_features
from dia2.errors import PushError

logger = logging.getLogger(__name__)

TMP_DIR = ".dia2-prep-tmp"
_DATASET_FILES = ("dataset_dict.json", *SPLITS)


def assign_splits(
    names: Sequence[str], validation_fraction: float, seed: int, validation_folders: Sequence[str] = ()
) -> dict[str, str]:
    """Recording name -> "train" or "validation".

    With `validation_folders`, the recordings under those sub-folders of the input are the
    validation split (a split by speaker when each speaker has a folder). Otherwise
    round(fraction * n) recordings (at least one when there are two or more and the fraction is
    positive, and never all) go to validation, chosen by a seeded shuffle of the sorted names, so
    the split does not depend on the order recordings were prepared in.
    """
    if validation_folders:
        return _split_by_folder(names, validation_folders)
    ordered = sorted(names)
    count = 0
    if validation_fraction > 0 and len(ordered) >= 2:
        count = min(len(ordered) - 1, max(1, round(validation_fraction * len(ordered))))
    shuffled = list(ordered)
    random.Random(seed).shuffle(shuffled)
    held_out = set(shuffled[:count])
    return {name: "validation" if name in held_out else "train" for name in ordered}


def check_validation_folders(names: Sequence[str], folders: Sequence[str], what: str = "recording") -> None:
    """Refuse --validation-folders naming a folder that holds none of `names` (recording names)."""
    unused = [f for f in folders if not any(n.startswith(f.strip("/") + "/") for n in names)]
    if unused:
        raise PrepConfigError(
            f"--validation-folders {','.join(unused)}: no {what} lies in that folder of the input; give "
            "sub-folders of the input that hold recordings (e.g. one folder per speaker)"
        )


def _split_by_folder(names: Sequence[str], folders: Sequence[str]) -> dict[str, str]:
    prefixes = tuple(f.strip("/") + "/" for f in folders)
    splits = {name: "validation" if name.startswith(prefixes) else "train" for name in sorted(names)}
    check_validation_folders(names, folders, "kept recording")
    if "train" not in splits.values():
        raise PrepConfigError("--validation-folders holds every kept recording: leave some folders for training")
    return splits


def write_corpus(folder: Path, results: Sequence[FileResult], splits: dict[str, str], num_codebooks: int) -> dict[str, int]:
    """Save the rows of `results` (in their order) as the corpus in `folder`; rows per split."""
    from datasets import Dataset, DatasetDict
    from datasets.arrow_writer import ArrowWriter

    features = corpus_features(num_codebooks)
    tmp = folder / TMP_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    parts, counts = {}, {}
    for split in SPLITS:
        rows = _rows_of(results, splits, split)
        path = tmp / f"{split}.arrow"
        with ArrowWriter(features=features, path=str(path)) as writer:
            for row in rows:
                writer.write(row)
            count, _ = writer.finalize()
        if count:
            parts[split] = Dataset.from_file(str(path))
            counts[split] = count
    if not parts:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError("no rows to write")
    DatasetDict(parts).save_to_disk(str(tmp / "corpus"))
    for name in _DATASET_FILES:
        target, fresh = folder / name, tmp / "corpus" / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        if fresh.exists():
            fresh.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return counts


def _rows_of(results: Sequence[FileResult], splits: dict[str, str], split: str) -> Iterable[dict]:
    for result in results:
        if splits.get(result.source) == split:
            yield from result.rows


def push_corpus(folder: Path, repo_id: str, private: bool, extra_files: Sequence[str]) -> None:
    """Upload the saved corpus (`push_to_hub`) and `extra_files` of `folder` to a Hub dataset repo."""
    from datasets import load_from_disk
    from huggingface_hub import HfApi

    try:
        load_from_disk(str(folder)).push_to_hub(repo_id, private=private)
        api = HfApi()
        for name in extra_files:
            api.upload_file(path_or_fileobj=str(folder / name), path_in_repo=name, repo_id=repo_id, repo_type="dataset")
    except Exception as exc:  # network, auth and Hub errors come in many types; one message for all
        raise PushError(
            f"the corpus is saved in {folder}, but uploading it to {repo_id} failed ({type(exc).__name__}: {exc}); "
            "check `hf auth login` and the network, then run the same command again (finished recordings are reused)"
        ) from exc
