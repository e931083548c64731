"""Resumable checkpoints, written atomically, the last N kept.

A checkpoint is a folder `checkpoints/step_NNNNNN/` holding everything that makes a resumed run
continue exactly as if it had not stopped:

| file | what |
|---|---|
| trainable.safetensors | the parameters that train (LoRA weights, or all weights for full fine-tuning) |
| optimizer.pt, scheduler.pt | their state dicts |
| rng_rank{r}.pt | each process's RNG states (python, numpy, torch CPU and CUDA): LoRA dropout draws from them |
| state.json | step, data position (epoch, batch index), number of processes, training seconds so far |

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
from safetensors.torch import load_file, save_file
from torch import nn

from dia2.errors import Dia2Error
from finetune.data import DataPosition

logger = logging.getLogger(__name__)

PREFIX = "step_"
PARTIAL = ".partial-"


class ResumeError(Dia2Error, RuntimeError):
    """A checkpoint that cannot be resumed from; the message says why and what to do."""


@dataclass(frozen=True)
class Progress:
    """Where a run stands at a checkpoint: the step, the data position, and the seconds spent
    training so far over every invocation (the run's records report the whole run)."""

    step: int
    position: DataPosition
    seconds: float = 0.0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, on the CPU."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


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

    `model` is the unwrapped model; model, optimizer and scheduler are the same on every process
    under DDP, so the main process writes them, and each process adds its own RNG states.
    """
    step, position = progress.step, progress.position
    final, partial = root / checkpoint_name(step), root / f"{PARTIAL}{checkpoint_name(step)}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), partial / f"rng_rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file(trainable_state(model), str(partial / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        state = {
            "step": step, "epoch": position.epoch, "index": position.index, "world_size": accelerator.num_processes,
            "seconds": round(progress.seconds, 3),
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
    folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, accelerator: Any
) -> Progress:
    """Restore weights, optimizer, scheduler and this process's RNG; returns where the run stood."""
    try:
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "trainable.safetensors"))
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{folder} is not a complete checkpoint ({exc}); resume from another one") from exc
    if state["world_size"] != accelerator.num_processes:
        raise ResumeError(
            f"{folder} was written by {state['world_size']} process(es) but this run has {accelerator.num_processes}: "
            "the data order depends on it, so resume with the same number of processes"
        )
    expected = set(trainable_state(model))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise ResumeError(
            f"{folder} does not hold this run's trainable weights (missing {missing[:3]}, unexpected {extra[:3]}): "
            "it comes from a run with another model or LoRA config"
        )
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / f"rng_rank{accelerator.process_index}.pt", weights_only=True))
    logger.info("resumed from %s (step %d)", folder, state["step"])
    # Checkpoints written before the seconds were recorded count from zero.
    return Progress(state["step"], DataPosition(state["epoch"], state["index"]), state.get("seconds", 0.0))


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
    old, new = _flatten(saved), _flatten(current)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ResumeError(
            f"cannot resume with a changed config ({details}); only {', '.join(RESUMABLE_CHANGES)} may change. "
            "Start a new run (another output.name) for other changes"
        )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
