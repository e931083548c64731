"""The learning-rate schedule, and how it continues when a resumed run changes optim.steps.

optim.lr x `lr_factor(step)` is the learning rate of optimizer step step+1: a linear warm-up over
optim.warmup_steps, then a decay (cosine, linear, or none for constant) down to
lr x min_lr_ratio at the last step.

Resuming with another optim.steps (more steps, usually: `--resume optim.steps=N`) extends the
schedule rather than restarting it: the steps already trained keep the learning rates they had,
and from the checkpoint's step the rate decays from where it stood to lr x min_lr_ratio at the new
last step (a finished schedule, at its end already, stays there). A run resumed during its warm-up
simply decays over the new number of steps. The decay in effect is kept in every checkpoint, so a
further resume continues it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from finetune.config import OptimSection


@dataclass(frozen=True)
class Decay:
    """The decay in effect: its factor is `high` at step `start` and min_lr_ratio at step `steps` - 1
    (the last optimizer step is `steps`)."""

    start: int
    high: float
    steps: int

    @classmethod
    def fresh(cls, optim: OptimSection) -> Decay:
        """A run's own decay: from 1 after the warm-up to min_lr_ratio at optim.steps."""
        return cls(optim.warmup_steps - 1, 1.0, optim.steps)

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, optim: OptimSection, steps: int) -> Decay:
        """The decay a checkpoint recorded; a checkpoint written before decays were recorded ran
        its run's own schedule over `steps`."""
        if record is None:
            return cls.fresh(dataclasses.replace(optim, steps=steps))
        return cls(int(record["start"]), float(record["high"]), int(record["steps"]))


def lr_factor(step: int, optim: OptimSection, decay: Decay | None = None) -> float:
    """Multiplier of optim.lr for optimizer step step+1 (`decay`: the one in effect; default the run's own)."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    decay = decay or Decay.fresh(optim)
    progress = min(1.0, max(0.0, (step - decay.start) / max(1, decay.steps - 1 - decay.start)))
    low = optim.min_lr_ratio
    shape = 1.0 - progress if optim.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return low + (decay.high - low) * shape


def continued_decay(recorded: Decay, step: int, optim: OptimSection) -> Decay:
    """The decay a run resumed at `step` with `optim` continues with: the recorded one when
    optim.steps is unchanged, else one from the rate step `step` left to the new end."""
    if recorded.steps == optim.steps:
        return recorded
    if step < optim.warmup_steps:
        return Decay.fresh(optim)  # nothing decayed yet: decay over the new number of steps
    before = dataclasses.replace(optim, steps=recorded.steps)
    return Decay(step, lr_factor(step, before, recorded), optim.steps)
