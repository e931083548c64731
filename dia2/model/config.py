"""Dia2 `config.json`: parsing, defaults and consistency checks (spec section 2).

The file is not a `transformers` config. It has three required blocks (`data`, `model`,
`runtime`) and an optional `assets` block; unknown keys are ignored so that newer checkpoints
still load. Every parsed value lands in a frozen dataclass; each default is defined once, here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from dia2.errors import Dia2Error

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "linear")
DEFAULT_MIMI_REPO = "kyutai/mimi"
"""The codec of every published Dia2 checkpoint: `assets.mimi` when the config names none."""


SAMPLE_RATE = 24000
"""Audio samples per second of Dia2's codec, Mimi: every waveform the model hears or speaks."""
FRAME_RATE = 12.5
"""Mimi frames per second, which is also grid columns per second (24 kHz / 1920 samples)."""


class ConfigError(Dia2Error, ValueError):
    """A Dia2 config that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class DataConfig:
    """Token ids and the channel layout of the token grid (spec sections 2 and 4)."""

    channels: int
    text_vocab_size: int
    audio_vocab_size: int
    action_vocab_size: int
    text_pad_token_id: int
    text_new_word_token_id: int
    action_pad_token_id: int
    action_new_word_token_id: int
    text_zero_token_id: int = 7
    audio_pad_token_id: int | None = None  # None -> audio_vocab_size - 1
    audio_bos_token_id: int | None = None  # None -> audio_vocab_size - 2
    delay_pattern: tuple[int, ...] = ()
    first_word_min_start: int = 0
    max_pad: int = 0
    second_stream_ahead: int = 0
    tokenizer_path: str | None = None

    def __post_init__(self) -> None:
        if self.audio_pad_token_id is None:
            object.__setattr__(self, "audio_pad_token_id", self.audio_vocab_size - 1)
        if self.audio_bos_token_id is None:
            object.__setattr__(self, "audio_bos_token_id", self.audio_vocab_size - 2)

    @property
    def num_codebooks(self) -> int:
        """K: Mimi codebooks in the grid (all channels but the two text streams)."""
        return self.channels - 2

    @property
    def delays(self) -> tuple[int, ...]:
        """Per-codebook delay, zeros when the config gives no pattern."""
        return self.delay_pattern or (0,) * self.num_codebooks


@dataclass(frozen=True)
class StackConfig:
    """Geometry of one transformer stack (the decoder, or the depformer's shared part)."""

    n_layer: int
    n_embd: int
    n_hidden: int
    gqa_query_heads: int
    kv_heads: int
    gqa_head_dim: int
    low_rank_dim: int | None = None


@dataclass(frozen=True)
class DepformerConfig(StackConfig):
    """The depformer: a small transformer over the codebooks of one frame."""

    apply_rope: bool = True
    text_embedding: bool = True
    mlp_activations: tuple[str, str] = ("silu", "linear")


@dataclass(frozen=True)
class ModelConfig:
    decoder: StackConfig
    depformer: DepformerConfig
    mlp_activations: tuple[str, str] = ("silu", "linear")  # `model.linear.mlp_activations`
    dropout: float = 0.0
    rope_min_timescale: float = 1.0
    rope_max_timescale: float = 10000.0
    normalization_layer_epsilon: float = 1e-5


@dataclass(frozen=True)
class RuntimeConfig:
    weights_schedule: tuple[int, ...]
    max_context_steps: int = 1500


@dataclass(frozen=True)
class AssetsConfig:
    tokenizer: str | None = None  # None -> data.tokenizer_path, then the model repo itself
    mimi: str = DEFAULT_MIMI_REPO


@dataclass(frozen=True)
class Dia2Config:
    data: DataConfig
    model: ModelConfig
    runtime: RuntimeConfig
    assets: AssetsConfig = field(default_factory=AssetsConfig)

    @property
    def num_codebooks(self) -> int:
        return self.data.num_codebooks

    @property
    def num_depformer_stages(self) -> int:
        """Stages 0..K-2; stage s predicts codebook s+1."""
        return self.data.num_codebooks - 1

    @property
    def num_weight_groups(self) -> int:
        return max(self.runtime.weights_schedule) + 1

    @property
    def depformer_logit_size(self) -> int:
        """Depformer logits are cut so that audio bos/pad can never be sampled there."""
        return min(self.data.audio_pad_token_id, self.data.audio_bos_token_id)

    def to_dict(self) -> dict[str, Any]:
        """The config as `config.json` content; `parse_config(cfg.to_dict()) == cfg`."""
        dec, dep = self.model.decoder, self.model.depformer
        data = {k: getattr(self.data, k) for k in self.data.__dataclass_fields__}
        data["delay_pattern"] = list(self.data.delay_pattern)
        return {
            "data": data,
            "model": {
                "decoder": {k: getattr(dec, k) for k in StackConfig.__dataclass_fields__},
                "depformer": {
                    **{k: getattr(dep, k) for k in DepformerConfig.__dataclass_fields__},
                    "mlp_activations": list(dep.mlp_activations),
                },
                "linear": {"mlp_activations": list(self.model.mlp_activations)},
                "dropout": self.model.dropout,
                "rope_min_timescale": self.model.rope_min_timescale,
                "rope_max_timescale": self.model.rope_max_timescale,
                "normalization_layer_epsilon": self.model.normalization_layer_epsilon,
            },
            "runtime": {
                "weights_schedule": list(self.runtime.weights_schedule),
                "max_context_steps": self.runtime.max_context_steps,
            },
            "assets": {"tokenizer": self.assets.tokenizer, "mimi": self.assets.mimi},
        }


def load_config(path: str | Path) -> Dia2Config:
    """Read and check a Dia2 `config.json`.

    Raises ConfigError naming the file and the key for a missing block or key, a value of the
    wrong type, or an inconsistent geometry.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Dia2 config not found: {path}. Pass the path of the model's config.json.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); restore the model's config.json.") from exc
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_config(raw: Mapping[str, Any]) -> Dia2Config:
    """Build a Dia2Config from the decoded JSON object of a `config.json`."""
    if not isinstance(raw, Mapping):
        raise ConfigError("the config must be a JSON object with blocks 'data', 'model', 'runtime'")
    data_raw = _block(raw, "data")
    model_raw = _block(raw, "model")
    runtime_raw = _block(raw, "runtime")
    assets_raw = raw.get("assets") or {}

    data = DataConfig(
        channels=_int(data_raw, "data", "channels"),
        text_vocab_size=_int(data_raw, "data", "text_vocab_size"),
        audio_vocab_size=_int(data_raw, "data", "audio_vocab_size"),
        action_vocab_size=_int(data_raw, "data", "action_vocab_size"),
        text_pad_token_id=_int(data_raw, "data", "text_pad_token_id"),
        text_new_word_token_id=_int(data_raw, "data", "text_new_word_token_id"),
        action_pad_token_id=_int(data_raw, "data", "action_pad_token_id"),
        action_new_word_token_id=_int(data_raw, "data", "action_new_word_token_id"),
        text_zero_token_id=_int(data_raw, "data", "text_zero_token_id", 7),
        audio_pad_token_id=_int(data_raw, "data", "audio_pad_token_id", None),
        audio_bos_token_id=_int(data_raw, "data", "audio_bos_token_id", None),
        delay_pattern=_int_tuple(data_raw, "data", "delay_pattern", ()),
        first_word_min_start=_int(data_raw, "data", "first_word_min_start", 0),
        max_pad=_int(data_raw, "data", "max_pad", 0),
        second_stream_ahead=_int(data_raw, "data", "second_stream_ahead", 0),
        tokenizer_path=_str(data_raw, "data", "tokenizer_path", None),
    )
    decoder = StackConfig(**_stack_fields(_block(model_raw, "decoder", "model."), "model.decoder"))
    dep_raw = _block(model_raw, "depformer", "model.")
    depformer = DepformerConfig(
        **_stack_fields(dep_raw, "model.depformer"),
        apply_rope=_bool(dep_raw, "model.depformer", "apply_rope", True),
        text_embedding=_bool(dep_raw, "model.depformer", "text_embedding", True),
        mlp_activations=_activations(dep_raw, "model.depformer"),
    )
    linear_raw = model_raw.get("linear") or {}
    model = ModelConfig(
        decoder=decoder,
        depformer=depformer,
        mlp_activations=_activations(linear_raw, "model.linear"),
        dropout=_float(model_raw, "model", "dropout", 0.0),
        rope_min_timescale=_float(model_raw, "model", "rope_min_timescale", 1.0),
        rope_max_timescale=_float(model_raw, "model", "rope_max_timescale", 10000.0),
        normalization_layer_epsilon=_float(model_raw, "model", "normalization_layer_epsilon", 1e-5),
    )
    runtime = RuntimeConfig(
        weights_schedule=_int_tuple(
            runtime_raw, "runtime", "weights_schedule", tuple(range(max(data.channels - 3, 0)))
        ),
        max_context_steps=_int(runtime_raw, "runtime", "max_context_steps", 1500),
    )
    assets = AssetsConfig(
        tokenizer=_str(assets_raw, "assets", "tokenizer", None) or data.tokenizer_path,
        mimi=_str(assets_raw, "assets", "mimi", None) or DEFAULT_MIMI_REPO,
    )
    cfg = Dia2Config(data=data, model=model, runtime=runtime, assets=assets)
    check_config(cfg)
    return cfg


def check_config(cfg: Dia2Config) -> None:
    """Consistency checks of spec section 2, plus the ones the model needs to be buildable."""
    d = cfg.data
    if d.channels < 4:
        raise ConfigError(f"data.channels = {d.channels}: need 2 text channels and at least 2 codebooks")
    if d.delay_pattern and len(d.delay_pattern) != d.channels - 2:
        raise ConfigError(
            f"data.delay_pattern has {len(d.delay_pattern)} entries but data.channels - 2 = "
            f"{d.channels - 2} codebooks; give one delay per codebook"
        )
    if any(x < 0 for x in d.delay_pattern):
        raise ConfigError(f"data.delay_pattern must be non-negative, got {list(d.delay_pattern)}")
    schedule = cfg.runtime.weights_schedule
    if len(schedule) != d.channels - 3:
        raise ConfigError(
            f"runtime.weights_schedule has {len(schedule)} entries but data.channels - 3 = "
            f"{d.channels - 3} depformer stages; give one weight group per stage"
        )
    if any(g < 0 for g in schedule):
        raise ConfigError(f"runtime.weights_schedule must hold group indices >= 0, got {list(schedule)}")
    missing = sorted(set(range(max(schedule) + 1)) - set(schedule))
    if missing:
        raise ConfigError(
            f"runtime.weights_schedule skips weight group(s) {missing}: groups must be 0..{max(schedule)}"
        )
    for name in ("text_pad_token_id", "text_new_word_token_id", "text_zero_token_id"):
        if not 0 <= getattr(d, name) < d.text_vocab_size:
            raise ConfigError(f"data.{name} = {getattr(d, name)} is outside text_vocab_size {d.text_vocab_size}")
    for name in ("audio_pad_token_id", "audio_bos_token_id"):
        if not 0 <= getattr(d, name) < d.audio_vocab_size:
            raise ConfigError(f"data.{name} = {getattr(d, name)} is outside audio_vocab_size {d.audio_vocab_size}")
    for name in ("action_pad_token_id", "action_new_word_token_id"):
        if not 0 <= getattr(d, name) < d.action_vocab_size:
            raise ConfigError(f"data.{name} = {getattr(d, name)} is outside action_vocab_size {d.action_vocab_size}")
    for key, stack in (("model.decoder", cfg.model.decoder), ("model.depformer", cfg.model.depformer)):
        for name in ("n_layer", "n_embd", "n_hidden", "gqa_query_heads", "kv_heads", "gqa_head_dim"):
            if getattr(stack, name) <= 0:
                raise ConfigError(f"{key}.{name} must be positive, got {getattr(stack, name)}")
        if stack.gqa_query_heads % stack.kv_heads:
            raise ConfigError(
                f"{key}.gqa_query_heads = {stack.gqa_query_heads} is not divisible by "
                f"{key}.kv_heads = {stack.kv_heads}"
            )
        if stack.gqa_head_dim % 2:
            raise ConfigError(f"{key}.gqa_head_dim = {stack.gqa_head_dim} must be even (RoPE rotates halves)")
        if stack.low_rank_dim is not None and stack.low_rank_dim <= 0:
            raise ConfigError(f"{key}.low_rank_dim must be positive or absent, got {stack.low_rank_dim}")
    m = cfg.model
    if not 0 < m.rope_min_timescale <= m.rope_max_timescale:
        raise ConfigError("model.rope_min_timescale must be > 0 and <= model.rope_max_timescale")
    if m.normalization_layer_epsilon <= 0:
        raise ConfigError("model.normalization_layer_epsilon must be > 0")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if cfg.runtime.max_context_steps <= 0:
        raise ConfigError("runtime.max_context_steps must be positive")


# --- typed field readers: each error names the dotted key -------------------------------------

_MISSING = object()


def _block(raw: Mapping[str, Any], key: str, prefix: str = "") -> Mapping[str, Any]:
    if key not in raw:
        raise ConfigError(f"missing required block '{prefix}{key}'")
    value = raw[key]
    if not isinstance(value, Mapping):
        raise ConfigError(f"'{prefix}{key}' must be a JSON object, got {type(value).__name__}")
    return value


def _get(raw: Mapping[str, Any], block: str, key: str, default: Any) -> Any:
    if key in raw and raw[key] is not None:
        return raw[key]
    if default is _MISSING:
        raise ConfigError(f"missing required key '{block}.{key}'")
    return default


def _int(raw: Mapping[str, Any], block: str, key: str, default: Any = _MISSING) -> Any:
    value = _get(raw, block, key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"'{block}.{key}' must be an integer, got {value!r}")
    return int(value)


def _float(raw: Mapping[str, Any], block: str, key: str, default: Any = _MISSING) -> float:
    value = _get(raw, block, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"'{block}.{key}' must be a number, got {value!r}")
    return float(value)


def _bool(raw: Mapping[str, Any], block: str, key: str, default: Any = _MISSING) -> bool:
    value = _get(raw, block, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"'{block}.{key}' must be true or false, got {value!r}")
    return value


def _str(raw: Mapping[str, Any], block: str, key: str, default: Any = _MISSING) -> Any:
    value = _get(raw, block, key, default)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"'{block}.{key}' must be a string, got {value!r}")
    return value


def _int_tuple(raw: Mapping[str, Any], block: str, key: str, default: Any = _MISSING) -> tuple[int, ...]:
    value = _get(raw, block, key, default)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConfigError(f"'{block}.{key}' must be a list of integers, got {value!r}")
    return tuple(value)


def _stack_fields(raw: Mapping[str, Any], block: str) -> dict[str, Any]:
    fields = {
        name: _int(raw, block, name)
        for name in ("n_layer", "n_embd", "n_hidden", "gqa_query_heads", "kv_heads", "gqa_head_dim")
    }
    fields["low_rank_dim"] = _int(raw, block, "low_rank_dim", None)
    return fields


def _activations(raw: Mapping[str, Any], block: str) -> tuple[str, str]:
    value = _get(raw, block, "mlp_activations", ["silu", "linear"])
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, str) and v in ACTIVATIONS for v in value)
    ):
        raise ConfigError(
            f"'{block}.mlp_activations' must be two names from {list(ACTIVATIONS)} (gate, up), got {value!r}"
        )
    return (value[0], value[1])
