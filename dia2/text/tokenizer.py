"""The Dia2 text tokenizer: where it comes from and how it is loaded (spec section 1).

GPT-2 style byte-level BPE with added tokens `[S1]`, `[S2]` and non-verbal tags. Loaded with
`AutoTokenizer.from_pretrained(..., use_fast=False)` and never re-saved: a save/load round
trip of the published tokenizer drops its added tokens.

Where it comes from, first match wins: the `dia2_assets.json` manifest's `tokenizer`, the
config's `assets.tokenizer` (which falls back to `data.tokenizer_path`), then the model repo.
A relative path is looked up inside a local model folder first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dia2.model.assets import AssetError, ModelSource

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")


class TokenizerError(AssetError):
    """A tokenizer that cannot be found or loaded; the message names the source and the fix."""


def tokenizer_source(model: ModelSource, manifest_tokenizer: str | None, config_tokenizer: str | None) -> str:
    """The path or repo id the tokenizer is loaded from (see the module docstring)."""
    return model.asset(manifest_tokenizer) or model.asset(config_tokenizer) or model.location


def load_tokenizer(source: str | os.PathLike, revision: str | None = None) -> "PreTrainedTokenizerBase":
    """Load the tokenizer from a folder or Hub repo id (`use_fast=False`, as published)."""
    from transformers import AutoTokenizer

    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise TokenizerError(f"tokenizer source {source} is a file; pass the folder holding vocab.json/merges.txt")
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise TokenizerError(
            f"{path} holds no tokenizer files ({', '.join(TOKENIZER_FILES)}); pass the model repo or --tokenizer"
        )
    try:
        return AutoTokenizer.from_pretrained(str(source), use_fast=False, revision=revision)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        raise TokenizerError(
            f"cannot load the tokenizer from '{source}'{hint}: {exc}. Pass a folder or repo id with --tokenizer"
        ) from exc


def tokenizer_fingerprint(tokenizer: "PreTrainedTokenizerBase") -> str:
    """Identity of the token ids: a hash of the full vocabulary, added tokens included."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return "tok-" + hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
