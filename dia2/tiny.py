"""The embedded tiny default: a complete Dia2 "model repo" built in-process, no downloads.

Tiny Dia2 (configs/models/tiny.json geometry) + tiny tokenizer + tiny Mimi, seeded, so the
same bundle comes out on every machine. Random, **untrained demo weights**: the audio is noise
shaped like speech codes, never speech. It exists so that every command of this toolkit runs
end to end on a fresh machine, and so that tests exercise the real loading paths.

The bundle is cached (built once, written atomically) under `$DIA2_CACHE` or
`~/.cache/dia2`, and is laid out exactly as a published repo plus a `dia2_assets.json` manifest
naming its Mimi folder. `model_source` resolves a model name with `tiny` among them: every
command that loads a model by name goes through it.

Every seeded stand-in lives here, for the bundle, tests and benchmarks: `build_tiny_tokenizer`,
`build_tiny_mimi` (the real frame geometry, tiny widths) and `build_random_mimi` (any geometry,
e.g. the full-size `MimiConfig()` for timing).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import MimiConfig, MimiModel

from dia2.audio.codec_stream import decoder_parts
from dia2.model.assets import DEFAULT_MANIFEST, TINY_MODEL, ModelSource, default_cache
from dia2.model.checkpoint import save_model
from dia2.model.config import parse_config
from dia2.model.network import Dia2Model

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


def build_tiny_bundle(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny model repo to `folder` (config, weights, tokenizer, mimi/, manifest)."""
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


def model_source(
    repo_or_dir: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None
) -> ModelSource:
    """Where the named model lives: `tiny` is the cached tiny bundle (built on first use), named
    `tiny` in records; anything else is `ModelSource.resolve`'s (a local folder or a Hub repo id)."""
    if str(repo_or_dir) == TINY_MODEL:
        return ModelSource(str(tiny_bundle()), True, name=TINY_MODEL)
    return ModelSource.resolve(repo_or_dir, revision, cache_dir)


# --- the tiny tokenizer ----------------------------------------------------------------------

_TINY_CORPUS = """
Hello there, how are you doing today? I am doing well, thank you for asking.
This is a tiny demo of a dialogue model that speaks two voices, one after the other.
The quick brown fox jumps over the lazy dog. A stable voice is what people need.
What time is it? It is time to train the model, then to listen to what it says.
We can talk about the weather, the news, music, books and the plans for the weekend.
"""
TINY_ADDED_TOKENS = ("[S1]", "[S2]", "(laughs)", "(sighs)", "(coughs)")


def build_tiny_tokenizer(folder: str | os.PathLike, vocab_size: int = 512) -> Path:
    """Write a small byte-level BPE tokenizer (deterministic) with Dia2's added tokens.

    The files are those of a published Dia2 repo (vocab.json, merges.txt, tokenizer_config.json,
    added tokens); ids stay below the tiny model's text vocab.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([line for line in _TINY_CORPUS.splitlines() if line], trainer)
    bpe.model.save(str(folder))
    tokenizer = GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.add_tokens(list(TINY_ADDED_TOKENS))
    tokenizer.save_pretrained(str(folder))
    return folder


# --- random Mimi codecs ----------------------------------------------------------------------


def build_tiny_mimi(seed: int = 0, num_codebooks: int = 8, codebook_size: int = 2048) -> MimiModel:
    """A deterministic tiny random Mimi (~150k parameters) with the real frame geometry.

    24 kHz, upsampling ratios [8, 6, 5, 4] and a 2x latent stride give 1920 samples per frame at
    12.5 Hz, like `kyutai/mimi`; widths and depths are tiny. The same seed gives bit-identical
    weights. The decoder attention window is 16 steps (8 frames) so that short test clips already
    cross it. Codebook ids run 0 .. codebook_size - 1.
    """
    if num_codebooks < 2:
        raise ValueError(f"Mimi needs >= 2 codebooks (1 semantic + acoustic), got {num_codebooks}")
    if codebook_size < 2 or codebook_size & (codebook_size - 1):
        raise ValueError(f"codebook_size must be a power of two, got {codebook_size}")
    config = MimiConfig(
        hidden_size=32,
        num_filters=4,
        upsampling_ratios=[8, 6, 5, 4],
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        upsample_groups=32,  # depthwise, as in the real Mimi (512 groups for 512 channels)
        num_quantizers=num_codebooks,
        codebook_size=codebook_size,
        sliding_window=16,
    )
    return build_random_mimi(config, seed)


def build_random_mimi(config: MimiConfig, seed: int = 0) -> MimiModel:
    """A seeded random Mimi of any geometry, usable as a codec stand-in (e.g. `MimiConfig()`, the real
    79M-parameter architecture, for timing). The global RNG is left untouched.

    Two fixes over plain random init: every codebook gets random centroids (init leaves them all
    zero, so every code would be 0), and the output layer is scaled so decoded audio has a std of
    ~0.1, a speech-like level (init decodes at a std of ~4-5, clipped almost everywhere).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MimiModel(config).eval()
        _randomise_codebooks(model)
        probe = torch.randint(0, config.codebook_size, (1, config.num_quantizers, 8))
        _scale_output(model, probe, target_std=0.1)
    return model


def _randomise_codebooks(model: MimiModel) -> None:
    """Random centroids with std 4 per dimension, about the spread of the projected latents of a
    randomly initialised Mimi, so nearest-centroid codes vary with the input at every level."""
    for rvq in (model.quantizer.semantic_residual_vector_quantizer, model.quantizer.acoustic_residual_vector_quantizer):
        for layer in rvq.layers:
            codebook = layer.codebook
            codebook.embed_sum.copy_(torch.randn_like(codebook.embed_sum) * 4.0)
            codebook.cluster_usage.fill_(1.0)
            codebook.initialized.fill_(1.0)
            # The codebook caches embed_sum / cluster_usage on first use; drop any stale copy.
            codebook._embed = None


@torch.no_grad()
def _scale_output(model: MimiModel, probe_codes: torch.Tensor, target_std: float) -> None:
    """Scale the decoder's last convolution (weight and bias) so `probe_codes` decode at `target_std`."""
    output_conv = decoder_parts(model).seanet.layers[-1].conv
    std = float(model.decode(probe_codes, return_dict=True).audio_values.std())
    factor = target_std / max(std, 1e-8)
    output_conv.weight.mul_(factor)
    if output_conv.bias is not None:
        output_conv.bias.mul_(factor)
