"""The model under training: the base (loaded as `Dia2.from_repo` loads it) plus what trains.

The base comes through `dia2.generation.tts.Dia2.from_repo`, the very path `dia2-infer` uses, so the
tokenizer and codec the trainer builds grids with (and checks the corpus against) are the ones
inference will use. LoRA layers are injected into that same `Dia2Model` in place, so the `Dia2`
object speaks evaluation samples with the current adapter and no copy of the model.

Sharding (FSDP2) comes from the Accelerate launch config (configs/accelerate/fsdp-*.yaml) and is
applied by `accelerator.prepare`; `select_fsdp_on_cpu` makes a CPU launch take that same path.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

from dia2.generation.tts import Dia2
from dia2.model.adapters import OUTPUT_HEADS, lora_model
from dia2.model.assets import ModelSource
from dia2.model.network import Dia2Model
from dia2.tiny import model_source
from finetune.config import LoraSection, ModelSection, QuantSection, TrainConfigError

logger = logging.getLogger(__name__)


@dataclass
class Base:
    """The loaded base: the `Dia2` (model, tokenizer, codec), where it came from, and the name
    an adapter records for it."""

    tts: Dia2
    source: str
    name: str


def resolve_source(base: str) -> ModelSource:
    """Where `model.base` lives: a local folder (absolute) or a Hub repo id; `tiny` builds or
    reuses the cached demo bundle. Its `name` is what the run's records call the base."""
    source = model_source(base)
    if source.is_local:
        return dataclasses.replace(source, location=str(Path(source.location).resolve()))
    return source


def weights_dtype(section: ModelSection, full_finetune: bool, device: torch.device) -> torch.dtype:
    """model.dtype resolved: auto is bf16 for frozen LoRA bases on CUDA, float32 otherwise."""
    if section.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" and not full_finetune else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[section.dtype]


def load_base(model: ModelSection, quant: QuantSection, full_finetune: bool, device: torch.device) -> Base:
    """Load the base model, tokenizer and codec onto `device` (quantized for QLoRA)."""
    source = resolve_source(model.base)
    dtype = weights_dtype(model, full_finetune, device)
    tts = Dia2.from_repo(
        source.location, device=str(device), dtype=dtype, low_vram=None if quant.mode == "none" else quant.mode
    )
    name = model.base_name or source.name
    logger.info("base %s (%s) on %s, %s, quantization %s", name, source.location, device, dtype, quant.mode)
    return Base(tts, source.location, name)


def make_trainable(
    model: Dia2Model, lora: LoraSection, base_name: str, token_indices: list[int] | None = None
) -> nn.Module:
    """The module the optimizer trains: `model` wrapped (in place) with fresh LoRA layers, a
    PeftModel recording `base_name`; or, for full fine-tuning, `model` with every weight trainable.
    token_indices: the text-embedding rows that train with lora.train_embeddings (the corpus's tokens)."""
    if lora.full_finetune:
        model.requires_grad_(True)
        return model
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    check_modules_to_save(model, lora.modules_to_save)
    try:
        return lora_model(
            model, lora.rank, lora.alpha, targets, lora.dropout, base_model_name_or_path=base_name,
            token_indices=token_indices if lora.train_embeddings else None, modules_to_save=list(lora.modules_to_save),
        )
    except ValueError as exc:  # PEFT's "Target modules ... not found in the base model"
        raise TrainConfigError(f"lora.target_modules={lora.target_modules!r} selects no layer of this model: {exc}") from exc


def check_modules_to_save(model: Dia2Model, names: tuple[str, ...]) -> None:
    """Refuse a lora.modules_to_save entry that names no module (PEFT matches names or suffixes)."""
    modules = [name for name, _ in model.named_modules()]
    for entry in names:
        if not any(m == entry or m.endswith("." + entry) for m in modules):
            raise TrainConfigError(
                f"lora.modules_to_save names '{entry}', which is no module of this model: use full module names such "
                f"as {', '.join(OUTPUT_HEADS)}"
            )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (4-bit weights count as stored, two per byte)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total}


def select_fsdp_on_cpu(accelerator: Any) -> None:
    """Shard with FSDP on CPU processes when the launch asked for it (`accelerate launch
    --config_file configs/accelerate/fsdp-*.yaml`, or --use_fsdp).

    Accelerate 1.15 joins CPU processes only as DDP (MULTI_CPU, over gloo) and never selects FSDP
    there, though torch's FSDP2 shards over gloo on the CPU. Selecting it here, once the process
    group is up, makes `accelerator.prepare` shard exactly as it does on GPUs, so a CPU run tests
    the GPU path.
    """
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    # Reads the FSDP_* variables the launcher set from the config file.
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
    # Both states: every later AcceleratorState() copies PartialState's fields over its own.
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP


def is_sharded(accelerator: Any) -> bool:
    """Whether the model's weights are sharded over the processes (FSDP) rather than replicated."""
    return accelerator.distributed_type == DistributedType.FSDP


def check_sharding(accelerator: Any, quant: QuantSection, sample_scripts: tuple[str, ...]) -> None:
    """Refuse what FSDP cannot shard or run, before the base loads."""
    if not is_sharded(accelerator):
        return
    if not accelerator.is_fsdp2:
        # FSDP1 flattens each unit's weights into one tensor: PEFT's mix of frozen and trainable
        # weights then needs use_orig_params, and the per-parameter state dicts below assume FSDP2.
        raise TrainConfigError(
            "the Accelerate config asks for FSDP1, which the trainer does not support: set fsdp_version: 2 "
            "(configs/accelerate/fsdp-full.yaml, fsdp-lora.yaml)"
        )
    if quant.mode != "none":
        raise TrainConfigError(
            f"quant.mode={quant.mode} cannot be sharded with FSDP (bitsandbytes weights are not sharded tensors): "
            "launch QLoRA with configs/accelerate/multi-gpu-ddp.yaml, or set quant.mode=none"
        )
    if sample_scripts:
        # Samples are spoken by the main process alone, but a sharded forward needs every process.
        raise TrainConfigError(
            "eval.scripts are spoken by one process, which sharded (FSDP) weights do not allow: set eval.scripts=[] "
            "(speak them afterwards: dia2-infer --adapter runs/NAME/adapter), or train with configs/accelerate/multi-gpu-ddp.yaml"
        )
