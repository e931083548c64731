"""Several PEFT LoRA adapters served side by side on one Dia2Model, chosen per batch row.

A serving batch mixes utterances in different voices. Merging an adapter into the weights
serves one voice at a time; PEFT's live layers apply one adapter to the whole batch. `LoraBank`
does what S-LoRA and punica do for LLM serving: every adapter's A and B matrices sit in a
stacked table per adapted linear layer, and a forward hook adds, for each batch row, the delta
of that row's adapter (`index_select` of its A/B, two `bmm`s), so one model step serves every
voice in the batch. The base weights and the model's parameter names never change.

An adapter may also replace weights outright, as a new-language adapter does (trained rows of the
text embedding, PEFT `trainable_token_indices`; whole output heads, `modules_to_save`): those are
served per row too (`dia2.model.row_weights`), so rows of such an adapter read its embedding rows
and heads while the other rows of the batch read the base's.

Shapes are fixed (adapters of rank r < max_rank are zero-padded, which is exact) and the hooks
read nothing back to the host, so a step that runs under `routed` can be captured in a CUDA
graph; `version` changes when hooks are added or removed or the embedding-row table is
re-allocated, which is when such a graph must be recaptured.

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
    TOKEN_DELTA,
    WEIGHTS_NAME,
    AdapterError,
    check_adapter_fits,
    read_adapter_config,
    resolve_adapter,
    token_indices,
    warn_if_other_base,
)
from dia2.model.layers import PLAIN_LINEARS
from dia2.model.network import Dia2Model
from dia2.model.peft_api import (
    BaseTunerLayer,
    LoraConfig,
    check_target_module_exists,
    get_pattern_key,
)
from dia2.model.row_weights import EmbeddingRows, LinearWeights

_MERGE_INSTEAD = (
    "the engine serves LoRA on linear layers, trained embedding rows and whole bias-free linear layers; merge "
    "this adapter into the base with `load_adapter` instead"
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


@dataclass
class _Adapter:
    """Everything one adapter brings, by module name: LoRA pairs, replaced embedding rows
    (token indices [N], rows [N, dim]) and replaced whole linear weights [out, in]."""

    lora: dict[str, _Weights] = field(default_factory=dict)
    rows: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    linears: dict[str, Tensor] = field(default_factory=dict)


class LoraBank:
    """PEFT LoRA adapters held side by side on one Dia2Model, applied per batch row, never merged."""

    def __init__(self, model: Dia2Model, max_adapters: int = 8, max_rank: int = 64) -> None:
        self.model = model
        self.max_adapters = max_adapters
        self.max_rank = max_rank
        self.version = 0
        self._slots: dict[str, int] = {}
        self._tables: dict[str, _Table] = {}
        self._embedding_rows: dict[str, EmbeddingRows] = {}
        self._linear_weights: dict[str, LinearWeights] = {}
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
        for replaced in (self._embedding_rows, self._linear_weights):
            for module_name, weights in list(replaced.items()):
                if slot not in weights.users:
                    continue
                weights.drop(slot)
                self.version += isinstance(weights, EmbeddingRows)  # its table was re-allocated
                if not weights.users:
                    weights.handle.remove()
                    del replaced[module_name]
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

    def _rows_hook(self, name: str, module: nn.Embedding, args: tuple, output: Tensor) -> Tensor | None:
        if self._rows is None:
            return None
        return self._embedding_rows[name].apply(self._rows, args[0], output)

    def _linear_hook(self, name: str, module: nn.Linear, args: tuple, output: Tensor) -> Tensor | None:
        if self._rows is None:
            return None
        return self._linear_weights[name].apply(self._rows, args[0], output)

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

    def _read(self, weights: Path, config: LoraConfig, label: str) -> _Adapter:
        """The adapter's LoRA pairs (with scales), replaced embedding rows and replaced linear
        weights, refusing what the per-row hooks cannot serve."""
        tensors: dict[str, dict[str, Tensor]] = {}
        adapter = _Adapter()
        modules = dict(self.model.named_modules())
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                name = key.removeprefix(_SAVED_PREFIX)
                match = _LORA_KEY.fullmatch(name)
                if name.endswith("." + TOKEN_DELTA):
                    module = name.removesuffix("." + TOKEN_DELTA)
                    adapter.rows[module] = (torch.tensor(token_indices(config, module)), f.get_tensor(key))
                elif match is None:
                    self._read_full(adapter, modules, name, f.get_tensor(key), label)
                elif match["kind"] not in ("lora_A.weight", "lora_B.weight"):
                    raise AdapterError(f"adapter '{label}' holds '{key}' (not plain LoRA): {_MERGE_INSTEAD}")
                else:
                    tensors.setdefault(match["module"], {})[match["kind"]] = f.get_tensor(key)
        adapter.lora = {name: self._module_weights(name, pair, config, label) for name, pair in tensors.items()}
        return adapter

    @staticmethod
    def _read_full(adapter: _Adapter, modules: dict[str, nn.Module], name: str, tensor: Tensor, label: str) -> None:
        """A modules_to_save weight: a whole embedding becomes rows for every token, a bias-free
        linear a replaced weight; anything else (a norm, a bias) cannot be served per row."""
        module_name, _, param = name.rpartition(".")
        module = modules.get(module_name)
        if param == "weight" and isinstance(module, nn.Embedding):
            adapter.rows[module_name] = (torch.arange(module.num_embeddings), tensor)
        elif param == "weight" and type(module) in PLAIN_LINEARS and module.bias is None:
            adapter.linears[module_name] = tensor
        else:
            kind = type(module).__name__ if module is not None else "no module"
            raise AdapterError(
                f"adapter '{label}' replaces '{name}' ({kind}) whole (modules_to_save); the engine serves whole "
                f"embeddings and bias-free linear layers per row only: {_MERGE_INSTEAD}"
            )

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

    def _install(self, name: str, slot: int, adapter: _Adapter) -> None:
        modules = dict(self.model.named_modules())
        slots, dtype = self.max_adapters + 1, self.model.compute_dtype
        with torch.no_grad():
            for module_name, w in adapter.lora.items():
                table = self._tables.get(module_name) or self._hook_module(module_name, modules[module_name])
                rank = w.a.shape[0]
                table.a[slot, :rank] = w.a.to(table.a)
                table.b[slot, :, :rank] = w.b.to(table.b)
                table.scale[slot] = w.scale
                table.users.add(slot)
            for module_name, (indices, rows) in adapter.rows.items():
                if module_name not in self._embedding_rows:
                    hook = partial(self._rows_hook, module_name)
                    self._embedding_rows[module_name] = EmbeddingRows(modules[module_name], slots, dtype, hook)
                self._embedding_rows[module_name].put(slot, indices, rows)
                self.version += 1  # a new hook, or a re-allocated table
            for module_name, weight in adapter.linears.items():
                if module_name not in self._linear_weights:
                    hook = partial(self._linear_hook, module_name)
                    self._linear_weights[module_name] = LinearWeights(modules[module_name], slots, dtype, hook)
                    self.version += 1
                self._linear_weights[module_name].put(slot, weight)
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
