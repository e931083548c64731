"""Building blocks shared by the decoder and the depformer.

Numerics (spec section 3): norms run in float32; the residual stream is float32; every linear
layer receives its input in the compute dtype (the dtype of the norm weights, so float32 in
float32 mode and bf16 with bf16 weights); attention uses softmax scale 1.0; logits are float32.

Leaf modules take plain numbers, never the whole config. No cache means full causal attention
over the given sequence; a cache means write-then-attend.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "linear": lambda x: x,
}


class RMSNorm(nn.Module):
    """RMSNorm computed in float32; returns the dtype of its weight (the compute dtype).

    x / sqrt(mean(x^2) + eps) * weight, eps inside the root as the checkpoints were trained: one
    fused call, not five tensor ops (a frame runs ~300 of these norms).
    """

    def __init__(self, dim: int, eps: float, dtype: torch.dtype | None = None, device=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight.float(), self.eps).to(self.weight.dtype)


SMALL_BATCH_ROWS = 2
"""Up to this many rows, a float32 CPU `Linear` multiplies as weight @ x^T (see `Linear`)."""

PACK_ROWS = 8
"""The batch a packed weight's blocked layout is chosen for (it serves any number of rows)."""


def _can_pack() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


CAN_PACK = _can_pack()
"""Whether this torch has oneDNN's packed linear (`torch.ops.mkldnn`), as x86 and ARM CPU builds do."""

# Packed copies by weight: id -> (the weight, weakly; its storage and version when packed; the
# copy). Outside the modules, so copies, pickles and state dicts never carry them; an entry goes
# with its weight.
_PACKED: dict[int, tuple[weakref.ref, tuple[int, int], Tensor]] = {}


def _packed_copy(weight: Tensor) -> Tensor:
    """`weight`'s copy in oneDNN's blocked layout, made again when the weight changed through
    autograd's view of it (an optimizer step, `copy_`, a new tensor in its place); `forget_packed`
    for the rest."""
    kept = _PACKED.get(id(weight))
    key = (weight.data_ptr(), weight._version)
    if kept is None or kept[0]() is not weight or kept[1] != key:
        with torch.inference_mode(False), torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS)
        if kept is None or kept[0]() is not weight:
            weakref.finalize(weight, _PACKED.pop, id(weight), None)
        kept = _PACKED[id(weight)] = weakref.ref(weight), key, packed
    return kept[2]


def _packed_product(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [M, K] @ weight^T (+ bias) through the weight's packed copy."""
    return torch.ops.mkldnn._linear_pointwise(x, _packed_copy(weight), bias, "none", [], "")


# The schema is given: this module's annotations are strings, which older torch cannot read.
@torch.library.custom_op("dia2::packed_linear", mutates_args=(), schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
def packed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [M, K] @ weight^T (+ bias) through the weight's packed copy: one op to compiled graphs,
    which pass it the weight itself (so the copy follows the weight, as in eager frames)."""
    return _packed_product(x, weight, bias)


@packed_linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, same checkpoint keys) with two CPU paths for decoding.

    A decoding step multiplies a few rows (CFG's two branches, a serving batch's rows) by every
    weight, and MKL's `x @ W^T` (what `F.linear` asks for) packs W again at every call:
    - 2 rows (one utterance with CFG) multiply as `W @ x^T`, which streams W as it lies: over the
      linear layers of one frame of dia2-100m on one EPYC core, 22 vs 37 ms (issue 28 in
      bench/RESULTS.md); with both cores it is also the fastest way there is.
    - `packed` (set by `pack_linears`, as the serving engine does on a CPU): 3 rows and more
      multiply by a copy of W kept in oneDNN's blocked layout: 26 vs 43 ms at 8 rows (and on the
      machines measured, each row's result bit for bit the same whatever rows share its batch).
      It costs a second copy of the linear weights. Unpacked, from 3 rows on MKL's own path is
      about as fast as `W @ x^T` or faster.
      Compiled graphs multiply packed layers through the `dia2::packed_linear` op at any batch
      size (inductor alone would use plain MKL `mm`).

    The products are the same sums in another order (float32 rounding, ~1e-6 relative). Autograd
    recording (training), other dtypes and devices, and compiled graphs of unpacked layers take
    `F.linear` as before.
    """

    packed: bool = False
    """Multiply by the packed copy of the weight (see `pack_linears`)."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32 == self.weight.dtype
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            compiling = torch.compiler.is_compiling()
            rows = x.numel() // self.in_features if self.in_features else 0
            # Compiled graphs take the packed copy at every batch size: a test of the (dynamic)
            # row count would split them in two and recompile when a batch crossed it.
            if self.packed and (compiling or rows > SMALL_BATCH_ROWS):
                # Eager frames call the op's body: a custom op's dispatch at each of ~330 calls a
                # frame would cost more than it saves.
                product = packed_linear if compiling else _packed_product
                out = product(x.reshape(-1, self.in_features), self.weight, self.bias)
                return out.reshape(*x.shape[:-1], self.out_features)
            if not compiling and 1 < rows <= SMALL_BATCH_ROWS:
                # Rows laid out row after row: a transposed x (what this path returns) would make
                # x^T row-major, and MKL's kernel for that case is the slowest of all.
                out = torch.mm(self.weight, x.reshape(rows, self.in_features).contiguous().t()).t()
                if self.bias is not None:
                    out = out + self.bias
                return out.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, self.weight, self.bias)


def pack_linears(model: nn.Module, enabled: bool = True) -> int:
    """Switch every `Linear` of `model` to (or off) its packed weights for float32 CPU inference;
    returns how many. Off, or where this torch cannot pack (`CAN_PACK`), frees the copies. A weight
    changed in place behind autograd's back (through `.data`, as PEFT merges do) needs
    `forget_packed` afterwards; `dia2.model.adapters` calls it after every merge and unmerge."""
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.packed = enabled and CAN_PACK
    if not (enabled and CAN_PACK):
        forget_packed(model)
    return len(layers) if enabled and CAN_PACK else 0


def forget_packed(model: nn.Module) -> None:
    """Drop the packed copies of `model`'s weights: each is made again from the weight at its next use."""
    for parameter in model.parameters():
        _PACKED.pop(id(parameter), None)


PLAIN_LINEARS = (nn.Linear, Linear)
"""The float linear layer types (not a quantized subclass such as bitsandbytes')."""


class Rotary:
    """RoPE tables (half-split rotation) for a head dim and timescale range.

    timescale_i = min * (max/min) ** (2i / head_dim), i < head_dim/2.

    cos/sin are computed once per device for positions 0..length-1 and indexed at every call
    (a frame would otherwise rebuild them in every stack). `sin` is stored with its first half
    negated, the sign of the rotation's `-x2` term: `apply_rotary` then rotates with one roll. They are a cache, not module buffers
    (as `GroupIndex`'s indices), so a model built on the meta device never holds stale tables.
    `reserve` grows them on the host, before any graph capture or compiled call that reads them.
    """

    def __init__(self, head_dim: int, min_timescale: float, max_timescale: float) -> None:
        self.head_dim = head_dim
        self.min_timescale = min_timescale
        self.max_timescale = max_timescale
        self._tables: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def reserve(self, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin) [L, head_dim] float32 on `device` for at least positions 0..length-1."""
        tables = self._tables.get(device)
        if tables is None or tables[0].shape[0] < length:
            # Normal tensors even under inference_mode: training saves what it indexes from them.
            with torch.inference_mode(False):
                half = self.head_dim // 2
                fraction = 2 * torch.arange(half, device=device, dtype=torch.float32) / self.head_dim
                timescale = self.min_timescale * (self.max_timescale / self.min_timescale) ** fraction
                positions = torch.arange(max(length, 1), device=device, dtype=torch.float32)
                angles = positions[:, None] / timescale
                sin = angles.sin()
                tables = self._tables[device] = torch.cat([angles, angles], dim=-1).cos(), torch.cat([-sin, sin], dim=-1)
        return tables

    def span(self, start: int, length: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Tables of positions start..start+length-1 known on the host: views [T, head_dim]."""
        cos, sin = self.reserve(start + length, device)
        return cos[start : start + length], sin[start : start + length]

    def tables(self, positions: Tensor, reserved: int) -> tuple[Tensor, Tensor]:
        """positions [T] or [B, T] (long, on the tables' device, each < `reserved`: how many the
        caller knows it may ask for) -> (cos, sin), each [T, head_dim] float32; per-row positions
        give [B, 1, T, head_dim] (broadcast over heads)."""
        cos, sin = self.reserve(reserved, positions.device)
        cos, sin = cos[positions], sin[positions]
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x [B, H, T, hd] rotated in float32 with `Rotary`'s tables [T, hd] or [B, 1, T, hd]; returns
    x's dtype. Half-split: x * cos + [-x2, x1] * sin, written as x * cos + [x2, x1] * [-sin, sin]
    (the same products: a sign moves exactly), [x2, x1] being one roll by half the head."""
    x32 = x.float()
    return (x32 * cos + x32.roll(x.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


class MLP(nn.Module):
    """Gated MLP: wo(act0(gate) * act1(up)), with `wi` holding the gate rows first, then up."""

    def __init__(self, dim: int, hidden: int, activations: tuple[str, str], dtype=None, device=None) -> None:
        super().__init__()
        self.hidden = hidden
        self.act_gate = _ACTIVATIONS[activations[0]]
        self.act_up = _ACTIVATIONS[activations[1]]
        self.wi = Linear(dim, 2 * hidden, bias=False, dtype=dtype, device=device)
        self.wo = Linear(hidden, dim, bias=False, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.wi(x).split(self.hidden, dim=-1)
        return self.wo(self.act_gate(gate) * self.act_up(up))


@dataclass
class KVCache:
    """Keys and values of one attention layer, preallocated: k, v [B, H_kv, S, hd]."""

    k: Tensor
    v: Tensor

    @classmethod
    def empty(cls, batch: int, heads: int, length: int, head_dim: int, dtype, device) -> "KVCache":
        shape = (batch, heads, length, head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def narrow(self, length: int) -> KVCache:
        """The first `length` slots, as views (writes land in this cache)."""
        return KVCache(self.k[:, :, :length], self.v[:, :, :length])


class Attention(nn.Module):
    """Grouped-query attention for both stacks.

    The decoder has separate `q_proj/k_proj/v_proj/o_proj`; the depformer has, per weight group
    g, a fused `in_proj.{g}` (q, k, v rows in that order) and `out_proj.{g}`. That difference is
    the `groups` constructor argument (None: separate projections, no groups).

    q and k get a per-head RMSNorm **before** RoPE; the softmax scale is 1.0.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        eps: float,
        groups: int | None = None,
        dtype=None,
        device=None,
    ) -> None:
        super().__init__()
        assert n_heads % n_kv_heads == 0, (n_heads, n_kv_heads)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.groups = groups
        q_dim, kv_dim = n_heads * head_dim, n_kv_heads * head_dim
        self._split = (q_dim, kv_dim, kv_dim)

        def linear(i: int, o: int) -> Linear:
            return Linear(i, o, bias=False, dtype=dtype, device=device)

        if groups is None:
            self.q_proj = linear(dim, q_dim)
            self.k_proj = linear(dim, kv_dim)
            self.v_proj = linear(dim, kv_dim)
            self.o_proj = linear(q_dim, dim)
        else:
            self.in_proj = nn.ModuleList(linear(dim, q_dim + 2 * kv_dim) for _ in range(groups))
            self.out_proj = nn.ModuleList(linear(q_dim, dim) for _ in range(groups))
        self.q_norm = RMSNorm(head_dim, eps, dtype=dtype, device=device)
        self.k_norm = RMSNorm(head_dim, eps, dtype=dtype, device=device)

    def _qk_v(self, x: Tensor, group_index: GroupIndex | int | None) -> tuple[Tensor, Tensor]:
        """(queries and keys side by side [B, T, (H + H_kv) * hd], values [B, T, H_kv * hd])."""
        q_dim, kv_dim, _ = self._split
        if self.groups is None:
            return torch.cat([self.q_proj(x), self.k_proj(x)], dim=-1), self.v_proj(x)
        if isinstance(group_index, int):
            out = self.in_proj[group_index](x)
        else:
            out = _grouped_linear(x, self.in_proj, group_index)
        return out.split((q_dim + kv_dim, kv_dim), dim=-1)

    def _norm_heads(self, qk: Tensor) -> Tensor:
        """q_norm on the query heads and k_norm on the key heads of qk [B, T, H + H_kv, hd]: one
        norm and one weight product (a weighted norm is the unweighted one times the weight, bit
        for bit), not two of each, when both are this model's own RMSNorm."""
        qn, kn = self.q_norm, self.k_norm
        if not (type(qn) is RMSNorm and type(kn) is RMSNorm and qn.eps == kn.eps):  # e.g. PEFT-wrapped
            return torch.cat([qn(qk[:, :, : self.n_heads]), kn(qk[:, :, self.n_heads :])], dim=2)
        hd = self.head_dim
        weight = torch.cat([qn.weight.expand(self.n_heads, hd), kn.weight.expand(self.n_kv_heads, hd)])
        return (F.rms_norm(qk.float(), (hd,), None, qn.eps) * weight.float()).to(qn.weight.dtype)

    def _out(self, y: Tensor, group_index: GroupIndex | int | None) -> Tensor:
        if self.groups is None:
            return self.o_proj(y)
        if isinstance(group_index, int):
            return self.out_proj[group_index](y)
        return _grouped_linear(y, self.out_proj, group_index)

    def forward(
        self,
        x: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
        cache: KVCache | None = None,
        cache_index: Tensor | int | None = None,
        group_index: GroupIndex | int | None = None,
    ) -> Tensor:
        """x [B, T, D] -> [B, T, D].

        cos/sin [T, hd] (None: no RoPE). Without a cache: causal attention over the T positions.
        With a cache: keys/values are written at `cache_index` + 0..T-1 (an int, or a 0-dim
        long tensor so that CUDA graphs can replay the step), then each query attends to every
        cache slot up to its own. `group_index`: the depformer weight group, an int for a single
        stage, or per group the positions that use it (full sequence over stages).
        """
        B, T, _ = x.shape
        qk, v = self._qk_v(x, group_index)
        # Queries and keys are normed and rotated together: a decoding frame runs ~70 attentions.
        qk = self._norm_heads(qk.view(B, T, self.n_heads + self.n_kv_heads, self.head_dim)).transpose(1, 2)
        if cos is not None:
            qk = apply_rotary(qk, cos, sin)
        q, k = qk.split((self.n_heads, self.n_kv_heads), dim=1)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0, enable_gqa=self._gqa)
        else:
            y = self._attend_cached(q, k, v, cache, cache_index)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self._out(y, group_index)

    @property
    def _gqa(self) -> bool:
        return self.n_heads != self.n_kv_heads

    def _attend_cached(self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache, start: Tensor | int) -> Tensor:
        T = q.shape[2]
        if isinstance(start, int):
            # Eager, the position known on the host (a depformer stage, one utterance's decoder
            # step): the filled prefix is a plain slice, and one new column sees all of it.
            cache.k[:, :, start : start + T] = k
            cache.v[:, :, start : start + T] = v
            keys, values = cache.k[:, :, : start + T], cache.v[:, :, : start + T]
            if T == 1:
                return F.scaled_dot_product_attention(q, keys, values, scale=1.0, enable_gqa=self._gqa)
            mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start)
        elif start.dim() == 0:
            # The position is a device tensor (CUDA graphs replay with it), so the key length
            # stays the whole capacity, a static shape, and the mask hides the unfilled slots.
            slots = start + torch.arange(T, device=q.device)
            cache.k.index_copy_(2, slots, k)
            cache.v.index_copy_(2, slots, v)
            keys, values = cache.k, cache.v
            mask = torch.arange(cache.capacity, device=q.device)[None, :] <= slots[:, None]
        else:
            # One position per row [B] (a serving batch: rows at different lengths): each row
            # writes at its own slots and sees its own filled prefix.
            slots = start[:, None] + torch.arange(T, device=q.device)  # [B, T]
            index = slots[:, None, :, None].expand_as(k)
            cache.k.scatter_(2, index, k)
            cache.v.scatter_(2, index, v)
            keys, values = cache.k, cache.v
            mask = (torch.arange(cache.capacity, device=q.device) <= slots[..., None])[:, None]  # [B, 1, T, S]
        return _masked_attention(q, keys, values, mask)


class GroupIndex:
    """Per depformer weight group, the positions (stages, along the sequence) that use it.

    The full-sequence path gathers each group's positions, projects them with that group's
    weights and puts the results back in stage order. The index tensors are built once per
    device and reused: indexing with Python lists would build them on the host and copy them at
    every forward (and again at every checkpoint recompute), one blocking copy each on CUDA.
    They are a cache, not module buffers, so that a model built on the meta device and
    materialised with `to_empty` (the streaming checkpoint loader) never holds stale indices.
    """

    def __init__(self, schedule: Sequence[int], groups: int) -> None:
        self.positions = tuple(tuple(s for s, g in enumerate(schedule) if g == grp) for grp in range(groups))
        order = [pos for idx in self.positions for pos in idx]
        # inverse[pos]: where position pos landed once the groups' outputs are concatenated.
        self.inverse = tuple(sorted(range(len(order)), key=order.__getitem__))
        self._on_device: dict[torch.device, tuple[tuple[Tensor, ...], Tensor]] = {}

    def tensors(self, device: torch.device) -> tuple[tuple[Tensor, ...], Tensor]:
        """(each group's positions [n_g], inverse order [S]): long tensors on `device`."""
        if device not in self._on_device:
            # Normal tensors even when first asked for under inference_mode (evaluation):
            # training saves them for backward, which inference tensors cannot be.
            with torch.inference_mode(False):
                positions = tuple(torch.tensor(idx, dtype=torch.long, device=device) for idx in self.positions)
                self._on_device[device] = positions, torch.tensor(self.inverse, dtype=torch.long, device=device)
        return self._on_device[device]


def _masked_attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Softmax-scale-1.0 attention of q [B, H, T, hd] over keys/values [B, H_kv, S, hd] with
    mask [T, S] or per row [B, 1, T, S] (True: attend) -> [B, H, T, hd].

    Each KV head's group of H / H_kv query heads is folded into the query axis (query head h
    reads KV head h // group, as `enable_gqa` would). SDPA with both `enable_gqa` and a mask
    has no fused CUDA kernel (flash takes no mask, memory-efficient no GQA) and falls back to
    the math kernel, which materialises the scores and copies K/V repeated to every query head;
    without `enable_gqa` the memory-efficient kernel can run. The GPU check must confirm it: a
    profiler trace of one decoder step should show `aten::_efficient_attention_forward` (CUDA
    kernels named fmha_cutlassF...), not `aten::_scaled_dot_product_attention_math` (bmm,
    softmax, bmm).
    """
    B, H, T, hd = q.shape
    group = H // keys.shape[1]
    folded = q.reshape(B, H // group, group * T, hd)
    if T > 1:
        # The folded query axis is (group, T), group-major: the mask repeats along it (one
        # query's mask row broadcasts over it as it is).
        mask = mask.repeat(group, 1) if mask.dim() == 2 else mask.repeat(1, 1, group, 1)
    y = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask, scale=1.0)
    # reshape, not view: CUDA's memory-efficient kernel returns a transposed, non-contiguous output.
    return y.reshape(B, H, T, hd)


def _grouped_linear(x: Tensor, layers: nn.ModuleList, group_index: GroupIndex) -> Tensor:
    """Apply layers[g] to the positions (dim -2) of group g; x [..., S, Din] -> [..., S, Dout]."""
    positions, inverse = group_index.tensors(x.device)
    outputs = [layers[g](x.index_select(-2, idx)) for g, idx in enumerate(positions)]
    return torch.cat(outputs, dim=-2).index_select(-2, inverse)
