"""Several PEFT LoRA adapters served side by side on one Dia2Model, chosen per batch row.

A serving batch mixes utterances in different voices. Merging an adapter into the weights
serves one voice at a time; PEFT's live layers apply one adapter to the whole batch. `LoraBank`
does what S-LoRA and punica do for LLM serving: every adapter's A and B matrices sit in a
stacked table per adapted linear layer, and a forward hook adds, for each batch row, the delta
of that row's adapter (`index_select` of its A/B, two `bmm`s), so one model step serves every
voice in the batch. The base weights and the model's parameter names never change.

Shapes are fixed (adapters of rank r < max_rank are zero-padded, which is exact) and the hook
reads nothing back to the host, so a step that runs under `routed` can be captured in a CUDA
graph; `version` changes when hooks are added or removed, which is when such a graph must be
recaptured.

Memory: sum over adapted linears of (max_adapters + 1) * max_rank * (in + out) elements in the
compute dtype. Dia2-2B with the default targets, 8 adapters of rank up to 64, bf16: ~1.3 GiB.

LoRA dropout is ignored (this is inference). Move the model before creating the bank: the tables
live on the model's device as it was then.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dia2.model.adapters import (
    _LORA_KEY,
    _SAVED_PREFIX,
    WEIGHTS_NAME,
    AdapterError,
    check_adapter_fits,
    read_adapter_config,
    resolve_adapter,
    warn_if_other_base,
)
from dia2.model.network import Dia2Model
from dia2.model.peft_api import (
    BaseTunerLayer,
    LoraConfig,
    check_target_module_exists,
    get_pattern_key,
)

_MERGE_INSTEAD = (
    "the engine serves plain LoRA on linear layers; merge this adapter into the base with `load_adapter` instead"
)


@dataclass
class _Table:
    """One hooked linear: every slot's LoRA weights. Slot 0 stays zero (no adapter).

    a [S, R, in], b [S, out, R] in the compute dtype, scale [S] float32 (S = max_adapters + 1,
    R = max_rank); `users`: the slots holding an adapter for this layer.
    """

    a: Tensor
    b: Tensor
    scale: Tensor
    handle: RemovableHandle
    users: set[int] = field(default_factory=set)


@dataclass
class _Weights:
    """One adapter's tensors for one linear: a [r, in], b [out, r], and its LoRA scale."""

    a: Tensor
    b: Tensor
    scale: float


class LoraBank:
    """PEFT LoRA adapters held side by side on one Dia2Model, applied per batch row, never merged."""

    def __init__(self, model: Dia2Model, max_adapters: int = 8, max_rank: int = 64) -> None:
        self.model = model
        self.max_adapters = max_adapters
        self.max_rank = max_rank
        self.version = 0
        self._slots: dict[str, int] = {}
        self._tables: dict[str, _Table] = {}
        self._rows: Tensor | None = None
        # Rows of x per batch row: 1, except in the full-sequence depformer, which sees the
        # decoder's B * (T - 1) frames flattened row-major.
        self._repeat = 1

    @property
    def names(self) -> tuple[str, ...]:
        """Loaded adapter names, in load order."""
        return tuple(self._slots)

    def index(self, name: str | None) -> int:
        """The value `routed` takes for rows served by adapter `name` (0 for None: the base)."""
        if name is None:
            return 0
        if name not in self._slots:
            raise AdapterError(f"no adapter named '{name}' is loaded ({self._loaded()}): load it first")
        return self._slots[name]

    def load(self, name: str, adapter: str | os.PathLike, revision: str | None = None) -> None:
        """Load a PEFT LoRA adapter (local folder or Hub repo id) under `name`.

        Everything is checked before anything changes: a refused adapter leaves the bank and the
        model as they were. Raises AdapterError naming the adapter and the fix.
        """
        label = str(adapter)
        if name in self._slots:
            raise AdapterError(
                f"cannot load adapter '{label}' as '{name}': an adapter of that name is already loaded; unload it "
                "first, or pick another name"
            )
        free = [s for s in range(1, self.max_adapters + 1) if s not in self._slots.values()]
        if not free:
            raise AdapterError(
                f"cannot load adapter '{label}': the bank is full ({self.max_adapters} = max_adapters: "
                f"{self._loaded()}); unload one or create the LoraBank with a larger max_adapters"
            )
        if any(isinstance(m, BaseTunerLayer) for m in self.model.modules()):
            raise AdapterError(
                f"cannot load adapter '{label}': the model already carries PEFT LoRA layers; build the bank "
                "on a plain base model"
            )
        folder = resolve_adapter(adapter, revision)
        config = read_adapter_config(folder, label)
        _check_plain_lora(config, label)
        _check_linear_targets(self.model, config, label)
        check_adapter_fits(self.model, folder / WEIGHTS_NAME, config, label)
        warn_if_other_base(self.model, config, label)
        weights = self._read(folder / WEIGHTS_NAME, config, label)
        self._install(name, free[0], weights)

    def unload(self, name: str) -> None:
        """Drop adapter `name`: its slot is zeroed for reuse; layers no adapter uses lose their hook."""
        slot = self.index(name)
        for module_name, table in list(self._tables.items()):
            if slot not in table.users:
                continue
            table.a[slot].zero_()
            table.b[slot].zero_()
            table.scale[slot] = 0.0
            table.users.discard(slot)
            if not table.users:
                table.handle.remove()
                del self._tables[module_name]
                self.version += 1
        del self._slots[name]

    @contextmanager
    def routed(self, rows: Tensor) -> Iterator[None]:
        """Within the block, batch row b gets the delta of adapter rows[b] (0: none).

        rows: long [B] on the model's device, values from `index`. Every model call in the block
        must have B rows (decoder, depformer step) or B * (T - 1) frames (the full forward's depformer).
        """
        assert rows.dim() == 1, f"rows must be [B], got shape {tuple(rows.shape)}"
        assert self._rows is None, "LoraBank.routed blocks do not nest"
        depformer = self.model.depformer
        handles = [
            depformer.register_forward_pre_hook(self._enter_depformer),
            depformer.register_forward_hook(self._leave_depformer),
        ]
        self._rows = rows
        try:
            yield
        finally:
            self._rows, self._repeat = None, 1
            for handle in handles:
                handle.remove()

    def _loaded(self) -> str:
        return "loaded: " + (", ".join(f"'{n}'" for n in self._slots) or "none")

    def _enter_depformer(self, module: nn.Module, args: tuple) -> None:
        assert self._rows is not None
        frames, batch = args[0].shape[0], self._rows.shape[0]
        assert frames % batch == 0, f"routed got {batch} rows but the depformer sees {frames} frames"
        self._repeat = frames // batch

    def _leave_depformer(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._repeat = 1

    def _hook(self, name: str, module: nn.Linear, args: tuple, output: Tensor) -> Tensor | None:
        """Add each row's LoRA delta: result + (x_b A_a^T) B_a^T * scale_a, a = rows[b]."""
        rows = self._rows
        if rows is None or not self._slots:
            return None
        table = self._tables[name]
        x = args[0]
        batch = rows.shape[0]
        assert x.shape[0] == batch * self._repeat, (
            f"routed got {batch} rows but '{name}' sees a batch of {x.shape[0] // self._repeat}"
        )
        # A batch row's frames are contiguous in x's first dim, so [B, L, in] groups them by row.
        x = x.reshape(batch, -1, x.shape[-1]).to(table.a.dtype)
        lora = torch.bmm(torch.bmm(x, table.a.index_select(0, rows).transpose(1, 2)),
                         table.b.index_select(0, rows).transpose(1, 2))
        delta = lora * table.scale.index_select(0, rows)[:, None, None]
        return output + delta.reshape(output.shape).to(output.dtype)

    def _read(self, weights: Path, config: LoraConfig, label: str) -> dict[str, _Weights]:
        """Module name -> its LoRA tensors and scale, refusing anything but plain LoRA on linears."""
        tensors: dict[str, dict[str, Tensor]] = {}
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                match = _LORA_KEY.fullmatch(key.removeprefix(_SAVED_PREFIX))
                if match is None:
                    raise AdapterError(
                        f"adapter '{label}' holds full tensor '{key}' (modules_to_save): {_MERGE_INSTEAD}"
                    )
                if match["kind"] not in ("lora_A.weight", "lora_B.weight"):
                    raise AdapterError(f"adapter '{label}' holds '{key}' (not plain LoRA): {_MERGE_INSTEAD}")
                tensors.setdefault(match["module"], {})[match["kind"]] = f.get_tensor(key)
        return {name: self._module_weights(name, pair, config, label) for name, pair in tensors.items()}

    def _module_weights(self, name: str, pair: dict[str, Tensor], config: LoraConfig, label: str) -> _Weights:
        if len(pair) != 2:
            raise AdapterError(f"adapter '{label}' holds only {list(pair)} for '{name}': re-save it with PEFT")
        a, b = pair["lora_A.weight"], pair["lora_B.weight"]
        rank = _pattern_value(config.rank_pattern, name, config.r)
        if a.shape[0] != rank or b.shape[1] != rank:
            raise AdapterError(
                f"adapter '{label}': '{name}' has lora_A {list(a.shape)} and lora_B {list(b.shape)} but its "
                f"config gives rank {rank}: re-save the adapter with PEFT's save_pretrained"
            )
        if rank > self.max_rank:
            raise AdapterError(
                f"adapter '{label}' has rank {rank} (at '{name}'), above this bank's max_rank = {self.max_rank}: "
                f"create the LoraBank with max_rank={rank} or more"
            )
        alpha = _pattern_value(config.alpha_pattern, name, config.lora_alpha)
        scale = alpha / math.sqrt(rank) if config.use_rslora else alpha / rank
        return _Weights(a, b, scale)

    def _install(self, name: str, slot: int, weights: dict[str, _Weights]) -> None:
        modules = dict(self.model.named_modules())
        with torch.no_grad():
            for module_name, w in weights.items():
                table = self._tables.get(module_name) or self._hook_module(module_name, modules[module_name])
                rank = w.a.shape[0]
                table.a[slot, :rank] = w.a.to(table.a)
                table.b[slot, :, :rank] = w.b.to(table.b)
                table.scale[slot] = w.scale
                table.users.add(slot)
        self._slots[name] = slot

    def _hook_module(self, name: str, module: nn.Linear) -> _Table:
        """Allocate `module`'s table (all zeros) and hook it."""
        slots, dtype, device = self.max_adapters + 1, self.model.compute_dtype, self.model.device
        table = _Table(
            a=torch.zeros(slots, self.max_rank, module.in_features, dtype=dtype, device=device),
            b=torch.zeros(slots, module.out_features, self.max_rank, dtype=dtype, device=device),
            scale=torch.zeros(slots, dtype=torch.float32, device=device),
            handle=module.register_forward_hook(partial(self._hook, name)),
        )
        self._tables[name] = table
        self.version += 1
        return table


def _check_plain_lora(config: LoraConfig, label: str) -> None:
    """Refuse LoRA variants the per-row hook does not compute."""
    if config.use_dora:
        raise AdapterError(f"adapter '{label}' is a DoRA adapter (use_dora): {_MERGE_INSTEAD}")
    lora_bias = getattr(config, "lora_bias", False)
    if config.bias != "none" or lora_bias:
        raise AdapterError(
            f"adapter '{label}' trains a LoRA bias (bias={config.bias!r}, lora_bias={lora_bias}): {_MERGE_INSTEAD}"
        )
    if config.modules_to_save:
        raise AdapterError(
            f"adapter '{label}' saves full modules (modules_to_save={config.modules_to_save}): {_MERGE_INSTEAD}"
        )
    if getattr(config, "target_parameters", None):
        raise AdapterError(f"adapter '{label}' targets parameters ({config.target_parameters}): {_MERGE_INSTEAD}")


def _check_linear_targets(model: nn.Module, config: LoraConfig, label: str) -> None:
    """Refuse an adapter whose target_modules select anything but nn.Linear (embeddings, containers)."""
    for name, module in model.named_modules():
        if check_target_module_exists(config, name) and not isinstance(module, nn.Linear):
            raise AdapterError(f"adapter '{label}' targets '{name}', a {type(module).__name__}: {_MERGE_INSTEAD}")


def _pattern_value(pattern: dict | None, name: str, default: float) -> float:
    """The rank_pattern / alpha_pattern entry for module `name`, resolved as PEFT resolves it."""
    pattern = pattern or {}
    return pattern.get(get_pattern_key(pattern.keys(), name), default)
