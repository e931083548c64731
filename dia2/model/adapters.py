"""LoRA adapters on a Dia2Model, in PEFT's own format.

An adapter is exactly the folder PEFT's `save_pretrained` writes: `adapter_config.json` +
`adapter_model.safetensors`, with keys `base_model.model.<module>.lora_{A,B}.weight` where
<module> is a Dia2 parameter path (spec section 3). Any PEFT user can load one with
`PeftModel.from_pretrained(Dia2Model...)`; this module adds what PEFT does not do for a
custom model: clear errors for a wrong path or an adapter trained on another base geometry,
checked before the model is touched.

`load_adapter(model, adapter)` folds the adapter into the weights (a plain Dia2Model, no
per-step cost). `load_adapter(..., merge=False)` returns an `AdaptedModel`: the same Dia2Model
with live LoRA layers, which can merge, unmerge, or be disabled so that one base serves both
with and without the voice.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn, overload

from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from dia2.model.adapter_files import (
    CONFIG_NAME,
    DEFAULT_TARGET_MODULES,
    WEIGHTS_NAME,
    AdapterError,
    read_adapter_json,
    resolve_adapter,
)
from dia2.model.layers import forget_packed
from dia2.model.network import DecoderOutput, DecodeState, Dia2Model, Dia2Output
from dia2.model.peft_api import (
    BaseTunerLayer,
    LoraConfig,
    PeftModel,
    check_target_module_exists,
    get_peft_model,
)

if TYPE_CHECKING:
    import torch

    from dia2.model.config import Dia2Config

logger = logging.getLogger(__name__)

TEXT_EMBEDDING = "transformer.text_embed.embedding"
"""The text embedding table [V, r]: a new-language adapter trains the rows of its language's
tokens (PEFT `trainable_token_indices`), the rest stay the base's."""
OUTPUT_HEADS = ("transformer.action_head", "transformer.cb0_head")
"""The decoder's output heads (when the next word starts; the semantic codebook). Dia2 has no
text output head: the text comes from the script. A new-language adapter trains them whole
(PEFT `modules_to_save`)."""
TOKEN_DELTA = "token_adapter.trainable_tokens_delta"
"""PEFT's saved name, under the embedding's module name, of the trained rows [N, r]."""

_SAVED_PREFIX = "base_model.model."
# PEFT's per-module LoRA tensors: <module>.<kind>. Anything else (modules_to_save copies) is a
# full tensor named like a model parameter.
_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<kind>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector"
    r"|lora_embedding_A|lora_embedding_B)"
)


def lora_model(
    model: Dia2Model,
    rank: int,
    alpha: float,
    target_modules: str | list[str] = DEFAULT_TARGET_MODULES,
    dropout: float = 0.0,
    base_model_name_or_path: str | None = None,
    token_indices: list[int] | None = None,
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap `model` (in place) with fresh trainable LoRA layers; save with `save_pretrained`.

    `base_model_name_or_path` (e.g. "nari-labs/Dia2-2B") is recorded in adapter_config.json so
    that a load onto the wrong base names the right one; without it PEFT records the model's
    `name_or_path` attribute, if any. token_indices: text-embedding rows that train too (PEFT
    `trainable_token_indices` on TEXT_EMBEDDING); modules_to_save: modules trained whole (e.g.
    OUTPUT_HEADS). Both are what a new language needs beyond a voice's LoRA.
    """
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=target_modules, lora_dropout=dropout, bias="none",
        trainable_token_indices={TEXT_EMBEDDING: sorted(token_indices)} if token_indices else None,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
    )
    peft_model = get_peft_model(model, config)
    if base_model_name_or_path is not None:
        # get_peft_model overwrites this field from `model.name_or_path`, so set it afterwards.
        peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path
    return peft_model


class AdaptedModel:
    """A Dia2Model carrying live (unmerged) LoRA layers, switchable at run time.

    `model` is the Dia2Model itself, with PEFT's LoRA layers in place of the targeted linears:
    `forward`, `prefill`, `step`, `depformer_inputs`, `depformer_step`, `new_state` and `config` behave as on any
    Dia2Model (also reachable through this handle) and include the adapter's contribution
    while it is enabled. `peft_model` is the PeftModel wrapping it (save_pretrained, more
    adapters). Switching acts on the shared weights, for every caller of the model at once:

    - `merge()` folds LoRA into the base weights (no per-step cost; reversible by `unmerge()`);
    - `unmerge()` restores the base weights, LoRA computed on the side again;
    - `disable()` / `enable()` switch the adapter off (base model outputs) and on;
    - `with handle.disabled(): ...` runs base outputs in a block, then restores the state.
    """

    def __init__(self, peft_model: PeftModel) -> None:
        self.peft_model = peft_model

    @property
    def model(self) -> Dia2Model:
        return self.peft_model.get_base_model()

    @property
    def config(self) -> Dia2Config:
        return self.model.config

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.compute_dtype

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, tokens: Tensor) -> Dia2Output:
        return self.model(tokens)

    def forward(self, tokens: Tensor) -> Dia2Output:
        """Teacher-forced pass over tokens [B, C, T]; see Dia2Model.forward."""
        return self.model(tokens)

    def new_state(self, batch_size: int, max_frames: int) -> DecodeState:
        return self.model.new_state(batch_size, max_frames)

    def prefill(self, tokens: Tensor, state: DecodeState) -> DecoderOutput:
        return self.model.prefill(tokens, state)

    def step(self, tokens: Tensor, state: DecodeState) -> DecoderOutput:
        return self.model.step(tokens, state)

    def depformer_inputs(self, hidden: Tensor) -> tuple[Tensor, ...]:
        return self.model.depformer_inputs(hidden)

    def depformer_step(
        self, stage: int, hidden: Tensor | tuple[Tensor, ...], token: Tensor, state: DecodeState, text: Tensor | None = None
    ) -> Tensor:
        return self.model.depformer_step(stage, hidden, token, state, text)

    def _lora_layers(self) -> list[BaseTunerLayer]:
        return [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]

    @property
    def merged(self) -> bool:
        """Whether the LoRA weights are folded into the base weights."""
        return all(layer.merged for layer in self._lora_layers())

    @property
    def enabled(self) -> bool:
        """Whether the adapter contributes to outputs (merged or not)."""
        return not any(layer.disable_adapters for layer in self._lora_layers())

    def merge(self) -> None:
        """Fold the adapter into the base weights (enabling it if disabled)."""
        if not self.enabled:
            self.enable()
        if not self.merged:
            self.peft_model.merge_adapter()
            forget_packed(self.model)  # PEFT changes the weights through `.data`

    def unmerge(self) -> None:
        """Take the adapter back out of the base weights; it stays active, computed on the side."""
        if any(layer.merged for layer in self._lora_layers()):
            self.peft_model.unmerge_adapter()
            forget_packed(self.model)

    def disable(self) -> None:
        """Base-model outputs from now on (unmerging first, so the base weights are clean)."""
        self.unmerge()
        self.peft_model.base_model.disable_adapter_layers()

    def enable(self) -> None:
        """Adapter outputs again (unmerged)."""
        self.peft_model.base_model.enable_adapter_layers()

    @contextmanager
    def disabled(self) -> Iterator[Dia2Model]:
        """Within the block the model gives base outputs; afterwards the previous state returns."""
        was_enabled, was_merged = self.enabled, self.merged
        self.disable()
        try:
            yield self.model
        finally:
            if was_enabled and was_merged:
                self.merge()
            elif was_enabled:
                self.enable()

    def merge_and_unload(self) -> Dia2Model:
        """Fold the adapter in for good: a plain Dia2Model, this handle is spent."""
        self.enable()
        model = self.peft_model.merge_and_unload()
        forget_packed(model)
        return model


@overload
def load_adapter(
    model: Dia2Model, adapter: str | os.PathLike, merge: Literal[True] = ..., revision: str | None = ...,
    adapter_name: str = ..., cache_dir: str | None = ...,
) -> Dia2Model: ...


@overload
def load_adapter(
    model: Dia2Model, adapter: str | os.PathLike, merge: Literal[False], revision: str | None = ...,
    adapter_name: str = ..., cache_dir: str | None = ...,
) -> AdaptedModel: ...


def load_adapter(
    model: Dia2Model,
    adapter: str | os.PathLike,
    merge: bool = True,
    revision: str | None = None,
    adapter_name: str = "default",
    cache_dir: str | None = None,
) -> Dia2Model | AdaptedModel:
    """Apply a PEFT LoRA adapter (local folder or Hub repo id) to `model`, in place.

    Every check (files, config, each tensor's shape against this model's layers) runs before
    the model is touched, so a refused adapter leaves the model as it was.
    merge=True: returns `model` with the LoRA weights folded in (a plain Dia2Model).
    merge=False: returns an `AdaptedModel` handle over `model` with live LoRA layers.
    Raises AdapterError naming the adapter and the fix.
    """
    if not isinstance(model, Dia2Model):
        raise TypeError(f"load_adapter takes a Dia2Model, got {type(model).__name__}")
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise AdapterError(
            f"cannot load adapter '{adapter}': the model already carries LoRA layers; load onto a fresh "
            "base, or add it through AdaptedModel.peft_model.load_adapter"
        )
    folder = resolve_adapter(adapter, revision, cache_dir)
    config = read_adapter_config(folder, str(adapter))
    check_adapter_fits(model, folder / WEIGHTS_NAME, config, str(adapter))
    warn_if_other_base(model, config, str(adapter))
    peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=adapter_name, config=config)
    logger.info("loaded LoRA adapter %s (rank %d) from %s", adapter, config.r, folder)
    handle = AdaptedModel(peft_model)
    return handle.merge_and_unload() if merge else handle


def warn_if_other_base(model: nn.Module, config: LoraConfig, label: str) -> None:
    """Warn when the adapter names another base than `model` (same geometry, or it was refused):
    e.g. an adapter applied to the merged export that already contains it."""
    base, name = config.base_model_name_or_path, getattr(model, "name_or_path", None)
    if base and name and base != name:
        logger.warning(
            "adapter '%s' was trained on base '%s' but is applied to '%s': if that model already contains the "
            "adapter (a merged export), it is now applied twice; load the adapter onto '%s'", label, base, name, base
        )


def read_adapter_config(folder: Path, label: str) -> LoraConfig:
    """Parse `adapter_config.json` of `folder`; refuse anything but a valid PEFT LoRA config."""
    read_adapter_json(folder, label)
    try:
        return LoraConfig.from_pretrained(str(folder))
    except (TypeError, ValueError) as exc:
        raise AdapterError(f"adapter '{label}': {folder / CONFIG_NAME} is not a valid LoRA config ({exc})") from exc


def check_adapter_fits(model: nn.Module, weights: Path, config: LoraConfig, label: str) -> None:
    """Refuse an adapter whose tensors do not fit this model's layers, before touching the model.

    Checks that every adapted module exists, that lora_A is [r, in] and lora_B [out, r] for it
    (Embedding: [r, vocab] and [dim, r]), that full tensors (modules_to_save) match their
    parameter, that trained embedding rows (trainable_token_indices) fit the table, and that every
    module the config targets here has weights in the file.
    """
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    fail = _mismatch_reporter(label, config)
    adapted: set[str] = set()
    for key, shape in _tensor_shapes(weights, label).items():
        match = _LORA_KEY.fullmatch(key)
        if key.endswith("." + TOKEN_DELTA):
            _check_token_rows(modules, key.removesuffix("." + TOKEN_DELTA), shape, config, fail)
            continue
        if match is None:
            if key not in params:
                fail(f"it holds the full tensor {key}, which names no parameter of this model")
            if not _saved_whole(config, key.rpartition(".")[0]):
                raise AdapterError(
                    f"adapter '{label}' holds the full tensor {key}, but its {CONFIG_NAME} does not list that module in "
                    "modules_to_save (PEFT would ignore it): re-save the adapter with PEFT's save_pretrained"
                )
            if tuple(params[key].shape) != shape:
                fail(f"its tensor {key} is {_show(shape)} but this model's is {_show(params[key].shape)}")
            continue
        name, kind = match["module"], match["kind"]
        adapted.add(name)
        if name not in modules:
            fail(f"it adapts module '{name}', which this model does not have")
        expected = _expected_lora_shape(modules[name], kind)
        if expected is None:
            fail(f"it adapts '{name}', a {type(modules[name]).__name__}, which LoRA cannot adapt here")
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
            fail(f"its {kind} for '{name}' has shape {_show(shape)} but this model needs {_show(expected)}")
    for name, module in modules.items():
        if isinstance(module, (nn.Linear, nn.Embedding)) and check_target_module_exists(config, name):
            if name not in adapted:
                fail(f"its target_modules select '{name}' in this model but it holds no weights for it")


def _saved_whole(config: LoraConfig, module: str) -> bool:
    """Whether `module` is one of the config's modules_to_save (PEFT matches a name or its suffix)."""
    return any(module == m or module.endswith("." + m) for m in config.modules_to_save or ())


def token_indices(config: LoraConfig, module: str) -> list[int]:
    """The embedding rows an adapter trained for `module` (none: an empty list)."""
    indices = config.trainable_token_indices or {}
    if isinstance(indices, list):  # PEFT's shorthand: the input embedding
        return list(indices) if module == TEXT_EMBEDDING else []
    return list(indices.get(module, []))


def _check_token_rows(
    modules: dict[str, nn.Module], name: str, shape: tuple[int, ...], config: LoraConfig, fail: Callable[[str], NoReturn]
) -> None:
    """Trained embedding rows [N, dim] must fit module `name`, an Embedding, at indices below its vocab."""
    module = modules.get(name)
    if not isinstance(module, nn.Embedding):
        fail(f"it trains token rows of '{name}', which is not an embedding of this model")
    rows = token_indices(config, name)
    if shape != (len(rows), module.embedding_dim):
        fail(f"its trained rows of '{name}' are {_show(shape)} for {len(rows)} token indices, but this model needs "
             f"[{len(rows)}, {module.embedding_dim}]")
    if rows and not 0 <= min(rows) <= max(rows) < module.num_embeddings:
        fail(f"it trains rows up to token {max(rows)} of '{name}', whose vocabulary has {module.num_embeddings}")


def _expected_lora_shape(module: nn.Module, kind: str) -> tuple[int | None, ...] | None:
    """The shape PEFT gives tensor `kind` of `module`; None stands for the rank, any value."""
    if isinstance(module, nn.Linear):  # bitsandbytes' quantized linears too: they keep in/out_features
        n_in, n_out = module.in_features, module.out_features
    elif isinstance(module, nn.Embedding):
        n_in, n_out = module.num_embeddings, module.embedding_dim
    else:
        return None
    return {
        "lora_A.weight": (None, n_in),
        "lora_embedding_A": (None, n_in),
        "lora_B.weight": (n_out, None),
        "lora_embedding_B": (n_out, None),
        "lora_B.bias": (n_out,),
        "lora_magnitude_vector": (n_out,),
    }[kind]


def _show(shape: tuple[int | None, ...] | torch.Size) -> str:
    """[4, 64], with 'r' for the rank where any rank fits."""
    return "[" + ", ".join("r" if d is None else str(d) for d in shape) + "]"


def _tensor_shapes(weights: Path, label: str) -> dict[str, tuple[int, ...]]:
    """Tensor name (without PEFT's `base_model.model.` prefix) -> shape, read from the header only."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {key.removeprefix(_SAVED_PREFIX): tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise AdapterError(f"adapter '{label}': {weights} is not a readable safetensors file ({exc})") from exc


def _mismatch_reporter(label: str, config: LoraConfig) -> Callable[[str], NoReturn]:
    """A function raising the one 'trained for another base' error, with a given detail."""
    base = config.base_model_name_or_path
    trained_for = f" ('{base}', per its {CONFIG_NAME})" if base else ""

    def fail(detail: str) -> NoReturn:
        raise AdapterError(
            f"adapter '{label}' was trained for another base model{trained_for}: {detail}. An adapter only "
            "fits the geometry it was trained on (e.g. a Dia2-2B adapter does not load on Dia2-1B): load it "
            "onto the base it was trained for."
        )

    return fail
