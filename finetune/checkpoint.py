"""Resumable checkpoints, written atomically, the last N kept, readable by any number of processes.

A checkpoint is a folder `checkpoints/step_NNNNNN/` holding everything that makes a resumed run
continue exactly as if it had not stopped:

| file | what |
|---|---|
| trainable.safetensors | the parameters that train (LoRA weights, or all weights for full fine-tuning), whole |
| optimizer.pt | AdamW's state, whole, keyed by parameter name |
| scheduler.pt | the learning-rate schedule's state |
| rng_rank{r}.pt | each process's RNG states (python, numpy, torch CPU and CUDA): LoRA dropout draws from them |
| state.json | step, data position (epoch, batches of it consumed by all processes), number of processes, seconds, the learning-rate decay in effect |

Weights and optimizer state are gathered whole (torch.distributed.checkpoint's full state dicts)
whether the processes replicate the model (DDP) or shard it (FSDP2), so the same folder resumes
on any number of processes, sharded or not. With the same number of processes a resumed run is
exact: same batches, same dropout draws, same losses. With another number it continues at the
same place in the data with the same weights, optimizer and schedule; a step then holds another
number of batches and the dropout draws are seeded afresh, as an uninterrupted run with the new
number of processes would differ too (the run logs a warning).

It is written into `.partial-step_NNNNNN/` and renamed into place once complete (a rename is
atomic), so a kill during a save leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from dia2.errors import Dia2Error
from finetune.data import DataPosition

logger = logging.getLogger(__name__)

PREFIX = "step_"
PARTIAL = ".partial-"

# Whole tensors, gathered to the main process's CPU (others get nothing): the same files for one
# process or many, replicated or sharded.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
# Whole tensors into the prepared model. Not strict: the frozen weights are not in a checkpoint,
# nor the moments of a weight that never had a gradient. One process reads the folder itself;
# with several, only the main one does and broadcasts each tensor in turn, each process keeping
# its shard: a full fine-tune's optimizer.pt is 3x the weights, too much for every process to hold.
_SET_ONE = StateDictOptions(full_state_dict=True, strict=False)
_SET_FROM_MAIN = StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=True)


class ResumeError(Dia2Error, RuntimeError):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands at a checkpoint: the step, the data position (shared by every process),
    and the seconds spent training so far over every invocation (the run's records report the
    whole run)."""

    step: int
    position: DataPosition
    seconds: float = 0.0
    lr_decay: dict[str, Any] | None = None  # finetune.schedule.Decay in effect (None: the run's own)


def trainable_state(model: nn.Module, every_weight: bool = False) -> dict[str, torch.Tensor]:
    """The parameters that train (`every_weight`: every weight and buffer), whole, by name, on the
    CPU of the main process; other processes get an empty dict.

    Collective: every process calls it. `model` may be plain, DDP-wrapped or FSDP2-sharded: names
    are the plain model's.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if every_weight else _GATHER
    return get_model_state_dict(model, options=options)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:06d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under root, oldest first (partial ones are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def save_checkpoint(
    root: Path,
    progress: Progress,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Any,
    keep_last: int,
) -> Path:
    """Write the checkpoint of `step` (collective: every process calls it); returns its folder.

    `model` and `optimizer` are the prepared ones (DDP or FSDP2 wrapped): their state is gathered
    whole onto the main process, which writes it; each process adds its own RNG states.
    """
    step, position = progress.step, progress.position
    final, partial = root / checkpoint_name(step), root / f"{PARTIAL}{checkpoint_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
        partial.mkdir(parents=True)
    weights = trainable_state(model)
    moments = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), partial / f"rng_rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(partial / "trainable.safetensors"))
        torch.save(moments, partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        state = {
            "step": step, "epoch": position.epoch, "batch": position.index, "world_size": accelerator.num_processes,
            "seconds": round(progress.seconds, 3), "lr_decay": progress.lr_decay,
        }
        (partial / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, accelerator: Any, seed: int
) -> Progress:
    """Restore weights, optimizer, scheduler and this process's RNG into the prepared `model` and
    `optimizer` (collective: every process calls it; the main process reads the weights and the
    optimizer state and broadcasts them); returns where the run stood."""
    several = accelerator.num_processes > 1
    state, weights, moments, problem = None, {}, {}, None
    if accelerator.is_main_process:
        try:
            state, weights, moments = _read_checkpoint(folder, accelerator.unwrap_model(model))
        except ResumeError as exc:
            problem = str(exc)
    if several:
        # The others learn of a bad folder here, rather than waiting for tensors that never come.
        state, problem = broadcast_object_list([state, problem])
    if problem is not None:
        raise ResumeError(problem)
    options = _SET_FROM_MAIN if several else _SET_ONE
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, moments, options=options)
    del weights, moments
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    step, saved_world = state["step"], state["world_size"]
    if saved_world == accelerator.num_processes:
        set_rng_state(torch.load(folder / f"rng_rank{accelerator.process_index}.pt", weights_only=True))
    else:
        # No saved stream for some of these processes: seed every one afresh, from the step.
        set_seed(seed + step, device_specific=True)
        if accelerator.is_main_process:
            logger.warning(
                "%s was written by %d process(es), this run has %d: training continues from the same data position "
                "and state, but a step now holds %d batch(es) and dropout draws anew, so the losses from here differ "
                "from an uninterrupted %d-process run", folder, saved_world, accelerator.num_processes,
                accelerator.num_processes, saved_world,
            )
    logger.info("resumed from %s (step %d)", folder, step)
    # Checkpoints written before the seconds were recorded count from zero.
    return Progress(step, DataPosition(state["epoch"], state["batch"]), state.get("seconds", 0.0), state.get("lr_decay"))


def read_state(folder: Path) -> dict[str, Any]:
    """state.json of checkpoint `folder` (step, data position, processes, seconds, lr decay)."""
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{folder} is not a complete checkpoint ({exc}); resume from another one") from exc


def _read_checkpoint(folder: Path, model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """state.json, the trainable weights and the optimizer state of `folder`, checked against the
    unwrapped `model`'s trainable parameters; ResumeError when they do not belong to it."""
    state = read_state(folder)
    try:
        weights = load_file(str(folder / "trainable.safetensors"))
        moments = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ResumeError(f"{folder} is not a complete checkpoint ({exc}); resume from another one") from exc
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected or not all(isinstance(k, str) for k in moments["state"]):
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ResumeError(
            f"{folder} does not hold this run's trainable weights (missing {missing[:3]}, unexpected {extra[:3]}): "
            "it comes from a run with another model or LoRA config, or from an older trainer"
        )
    return state, weights, moments


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, in a form torch.load(weights_only=True) reads."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- which checkpoint a run starts from ---------------------------------------------------------

# Config keys a resumed run may change: they do not alter what the finished steps computed.
RESUMABLE_CHANGES = ("output.", "eval.", "optim.steps")


def resume_checkpoint(option: str, run_root: Path) -> Path | None:
    """The checkpoint `output.resume` names, or None for a fresh run (refused over an existing run)."""
    root = run_root / "checkpoints"
    if option == "none":
        if complete_checkpoints(root) or (run_root / "adapter").exists() or (run_root / "model").exists():
            raise ResumeError(
                f"{run_root} already holds a run: continue it with output.resume=auto (--resume), or choose another "
                "output.name"
            )
        return None
    if option == "auto":
        found = complete_checkpoints(root)
        if not found:
            raise ResumeError(f"output.resume=auto: {root} holds no complete checkpoint to resume from")
        return found[-1]
    path = Path(option)
    if not (path / "state.json").is_file():
        raise ResumeError(f"output.resume={option}: not a checkpoint folder (it has no state.json)")
    return path


def check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume with a config that changes what the finished steps computed."""
    changes = config_changes(saved, current)
    changed = [k for k in changes if not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        details = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in changed[:5])
        raise ResumeError(
            f"cannot resume with a changed config ({details}); only {', '.join(RESUMABLE_CHANGES)} may change. "
            "Start a new run (another output.name) for other changes"
        )


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, current value) for every key two configs (as dicts) differ in, sorted."""
    old, new = _flatten(saved), _flatten(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
