"""The embedded tiny default: a complete Dia2 "model repo" built in-process, no downloads.

Tiny Dia2 (configs/models/tiny.json geometry) + tiny tokenizer + tiny Mimi, seeded, so the
same bundle comes out on every machine. Random, **untrained demo weights**: the audio is noise
shaped like speech codes, never speech. It exists so that every command of this toolkit runs
end to end on a fresh machine, and so that tests exercise the real loading paths.

The bundle is cached (built once, written atomically) under `$DIA2_CACHE` or
`~/.cache/dia2`, and is laid out exactly as a published repo plus a `dia2_assets.json` manifest
naming its Mimi folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from dia2.model.assets import DEFAULT_MANIFEST
from dia2.model.checkpoint import save_model
from dia2.model.config import parse_config
from dia2.model.network import Dia2Model
from dia2.text.tokenizer import build_tiny_tokenizer

BUNDLE_VERSION = 1
"""Bump when anything that goes into the bundle changes, so stale caches are rebuilt."""

TINY_GEOMETRY = {
    "data": {
        "channels": 10, "text_vocab_size": 1024, "audio_vocab_size": 2050, "action_vocab_size": 2,
        "text_pad_token_id": 3, "text_new_word_token_id": 2, "text_zero_token_id": 7,
        "audio_pad_token_id": 2049, "audio_bos_token_id": 2048,
        "action_pad_token_id": 0, "action_new_word_token_id": 1,
        "delay_pattern": [2, 3, 3, 3, 3, 3, 3, 3], "first_word_min_start": 3, "max_pad": 8,
        "second_stream_ahead": 2,
    },
    "model": {
        "decoder": {"n_layer": 2, "n_embd": 64, "n_hidden": 128, "gqa_query_heads": 4, "kv_heads": 2,
                    "gqa_head_dim": 16, "low_rank_dim": 32},
        "depformer": {"n_layer": 2, "n_embd": 32, "n_hidden": 64, "gqa_query_heads": 2, "kv_heads": 1,
                      "gqa_head_dim": 16, "apply_rope": True, "text_embedding": False,
                      "mlp_activations": ["silu", "linear"]},
        "linear": {"mlp_activations": ["silu", "linear"]},
        "dropout": 0.0, "rope_min_timescale": 1, "rope_max_timescale": 10000, "normalization_layer_epsilon": 1e-6,
    },
    "runtime": {"weights_schedule": [0, 1, 1, 2, 2, 2, 2], "max_context_steps": 1500},
}
"""The tiny geometry, embedded so the installed package needs no repo checkout
(configs/models/tiny.json holds the same; a test keeps them equal)."""


def default_cache() -> Path:
    return Path(os.environ.get("DIA2_CACHE") or Path.home() / ".cache" / "dia2")


def build_tiny_bundle(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny model repo to `folder` (config, weights, tokenizer, mimi/, manifest)."""
    from dia2.audio.codec import build_tiny_mimi

    folder = Path(folder)
    cfg = parse_config(TINY_GEOMETRY)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Dia2Model.from_config(cfg)
    save_model(model, folder)
    build_tiny_tokenizer(folder)
    build_tiny_mimi(seed=seed, num_codebooks=cfg.num_codebooks).save_pretrained(str(folder / "mimi"))
    (folder / DEFAULT_MANIFEST).write_text(json.dumps({"mimi": "mimi"}) + "\n")
    (folder / "README.md").write_text(
        "# Tiny Dia2 demo bundle\n\nRandom, untrained demo weights built in-process by `dia2.tiny`. "
        "It produces noise, not speech; use it to check that the toolkit runs.\n"
    )
    return folder


def tiny_bundle(cache: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The cached tiny bundle, built on first use. Safe against concurrent or killed builds:
    it is built in a temporary folder and renamed into place."""
    root = Path(cache) if cache is not None else default_cache()
    target = root / f"tiny-v{BUNDLE_VERSION}-seed{seed}"
    if (target / DEFAULT_MANIFEST).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=root))
    try:
        build_tiny_bundle(tmp, seed)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process won the race; its bundle is identical (same seed).
            if not (target / DEFAULT_MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
