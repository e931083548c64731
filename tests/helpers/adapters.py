"""Random PEFT LoRA adapters for the tiny geometry (or a changed one: "another base")."""

from __future__ import annotations

from pathlib import Path

import torch

from dia2.model.adapters import DEFAULT_TARGET_MODULES, OUTPUT_HEADS, lora_model
from dia2.model.config import Dia2Config, parse_config
from dia2.model.network import Dia2Model
from dia2.model.peft_api import LoraConfig, get_peft_model
from tests.conftest import tiny_raw_config


def tiny_model_config(n_embd: int | None = None, n_layer: int | None = None) -> Dia2Config:
    """The tiny geometry (configs/models/tiny.json), with the decoder's width or depth changed
    where given: a model an adapter of the tiny one does not fit."""
    raw = tiny_raw_config()
    if n_embd is not None:
        raw["model"]["decoder"]["n_embd"] = n_embd
    if n_layer is not None:
        raw["model"]["decoder"]["n_layer"] = n_layer
    return parse_config(raw)


def save_random_adapter(
    folder: Path, cfg: Dia2Config | None = None, seed: int = 1, scale: float = 0.2, base_name: str | None = None, **lora
) -> Path:
    """A random PEFT LoRA folder for a model of `cfg` (the tiny geometry by default): rank 4,
    alpha 8 on the default targets unless `lora` (LoraConfig fields) says otherwise. lora_B is
    drawn with std `scale` (PEFT starts it at zero, which would change nothing; 0 keeps PEFT's
    zeros: an untrained adapter). `base_name`: the base model the adapter records (none by default)."""
    torch.manual_seed(seed)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": DEFAULT_TARGET_MODULES, **lora})
    model = Dia2Model.from_config(cfg or tiny_model_config())
    if base_name is not None:
        model.name_or_path = base_name  # as a loaded checkpoint names itself: PEFT records it
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if scale and ("lora_B" in name or "lora_embedding_A" in name):
                param.normal_(0.0, scale)
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)  # else PEFT looks the base up on the Hub
    return folder


def save_language_adapter(folder: Path, seed: int, indices: list[int]) -> Path:
    """A new-language adapter for the tiny test model: LoRA + trained text-embedding rows (`indices`)
    + whole output heads, all moved off the base."""
    torch.manual_seed(seed)
    model = lora_model(Dia2Model.from_config(tiny_model_config()), 4, 8, token_indices=indices, modules_to_save=list(OUTPUT_HEADS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name or "modules_to_save" in name:
                param.add_(torch.randn_like(param) * 0.5)
    model.save_pretrained(str(folder), save_embedding_layers=False)
    return folder
