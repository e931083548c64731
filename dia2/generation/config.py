"""Every generation default, defined once: `GenerationConfig` (dia2-infer's, the server's and the
studio's generation flags, the Python API's argument, the trainer's sample settings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dia2.errors import Dia2Error
from dia2.generation.sampling import SamplingConfig
from dia2.text.state_machine import PUBLISHED_INITIAL_PADDING


class GenerationConfigError(Dia2Error, ValueError):
    """A generation setting out of range; the message names it."""


@dataclass(frozen=True)
class GenerationConfig:
    """Every generation default, defined once."""

    text: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.6, top_k=50))
    """Sampling of the action stream (new word or not)."""
    audio: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8, top_k=50))
    """Sampling of every audio codebook."""
    cfg_scale: float = 2.0
    """Classifier-free guidance scale; 1.0 disables CFG (and skips the unconditional branch)."""
    cfg_filter_k: int = 50
    """CFG keeps the top-k tokens of the guided logits, then samples the conditional ones."""
    initial_padding: int = PUBLISHED_INITIAL_PADDING
    """Pad frames forced before the first word."""
    max_frames: int | None = None
    """Most frames generated after the prefix (None: the model's runtime.max_context_steps)."""
    seed: int | None = None
    """Seed of the sampling RNG; the same seed gives the same audio on the same device."""
    include_prefix: bool = False
    """Keep the voice prefix's audio (and words) at the start of the output."""
    part_words: int | None = None
    """Most words per part of a script longer than one generation, cut at turns or sentences
    (None: what fits the context at a slow 6 frames a word, and no parts when max_frames is
    set; see dia2.generation.long_form)."""

    def __post_init__(self) -> None:
        if not self.cfg_scale > 0:
            raise GenerationConfigError(f"cfg_scale must be > 0 (1.0 disables guidance), got {self.cfg_scale}")
        if self.cfg_filter_k < 1:
            raise GenerationConfigError(f"cfg_filter_k must be >= 1, got {self.cfg_filter_k}")
        if self.initial_padding < 0:
            raise GenerationConfigError(f"initial_padding must be >= 0, got {self.initial_padding}")
        if self.max_frames is not None and self.max_frames < 1:
            raise GenerationConfigError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GenerationConfigError(f"seed must be in [0, 2**63), got {self.seed}")
        if self.part_words is not None and self.part_words < 1:
            raise GenerationConfigError(f"part_words must be >= 1, got {self.part_words}")

    @property
    def branches(self) -> int:
        """Rows the model runs per frame: conditional, plus unconditional when guiding."""
        return 1 if self.cfg_scale == 1.0 else 2
