"""Generation settings a stored voice keeps: a seed (so an uploaded voice sounds the same on every
request), a CFG scale, an audio temperature and top-k. Each is optional; a request that names the
voice gets them unless it sets its own, and the server's flags fill what neither sets.

They are stored in the voice's `meta.json` (keys `seed`, `cfg`, `temperature`, `top_k`), set at
upload (form fields of the same names) or changed later (`PATCH /v1/voices/{name}`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dia2.generation.config import GenerationConfig
from dia2.serving.voice_upload import VoiceError

MAX_SEED = 2**63
"""Seeds are 0 to MAX_SEED - 1 (GenerationConfig's range)."""


@dataclass(frozen=True)
class VoiceDefaults:
    """A voice's settings (None: not set). The same fields, set by a request, override them."""

    seed: int | None = None
    """Seed of the sampling: the same seed gives the same audio for the same text."""
    cfg: float | None = None
    """Classifier-free guidance scale (the server's --cfg); 1.0 disables guidance."""
    temperature: float | None = None
    """Audio sampling temperature (the server's --temperature); 0 samples greedily."""
    top_k: int | None = None
    """Audio top-k (the server's --topk); 0 keeps every token."""

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value is not None:
                _check(name, value)
                whole = name in ("seed", "top_k")
                object.__setattr__(self, name, int(value) if whole else float(value))  # 5.0 from JSON is 5

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> VoiceDefaults:
        """The settings a voice's meta.json holds (keys it lacks are unset)."""
        return cls(**{name: meta.get(name) for name in cls.fields()})

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changed(self, changes: Mapping[str, Any]) -> VoiceDefaults:
        """These settings with `changes` (a field set to None is unset); an unknown key is refused."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise VoiceError(f"{', '.join(unknown)}: not a voice setting; a voice keeps {', '.join(self.fields())}",
                             param=unknown[0])
        return dataclasses.replace(self, **changes)

    def over(self, config: GenerationConfig) -> GenerationConfig:
        """`config` with the settings that are set in place of its own."""
        audio = config.audio
        if self.temperature is not None:
            audio = dataclasses.replace(audio, temperature=self.temperature)
        if self.top_k is not None:
            audio = dataclasses.replace(audio, top_k=self.top_k)
        return dataclasses.replace(
            config, audio=audio, cfg_scale=config.cfg_scale if self.cfg is None else self.cfg,
            seed=config.seed if self.seed is None else self.seed,
        )


def _check(name: str, value: Any) -> None:
    """VoiceError naming the setting, its value and its range, unless the value is in range."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("seed", "top_k"):
        if not number or float(value) != int(value):
            raise VoiceError(f"{name} {value!r} is not a whole number", param=name)
        if name == "seed" and not 0 <= value < MAX_SEED:
            raise VoiceError(f"seed {value} is out of range: give 0 to 2**63 - 1", param=name)
        if name == "top_k" and value < 0:
            raise VoiceError(f"top_k {value} is negative: give 0 (keep every token) or more", param=name)
        return
    if not number or not math.isfinite(value):
        raise VoiceError(f"{name} {value!r} is not a number", param=name)
    if name == "cfg" and value <= 0:
        raise VoiceError(f"cfg {value} must be above 0 (1.0 disables guidance)", param=name)
    if name == "temperature" and value < 0:
        raise VoiceError(f"temperature {value} is negative: give 0 (greedy) or more", param=name)
