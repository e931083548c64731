"""Sampling and classifier-free guidance (spec section 6), for many rows at once.

Everything here is a pure tensor function (no host syncs), so a CUDA graph can capture a whole
frame's sampling, and each row carries its own settings (a serving batch mixes requests).

CFG as the published runtime does it: guided = uncond + scale * (cond - uncond); the top
`filter_k` entries of `guided` form the allowed set; the token is sampled from the
**conditional** logits restricted to that set. A row without guidance passes its conditional
logits as its unconditional ones and keeps every token (filter_k = V): plain sampling.

Randomness is counter-based: the noise of a draw is a pure function of (seed, counter, token
id), an integer hash made uniform and then Gumbel, and the token is the argmax of the tempered,
filtered logits plus that noise (the Gumbel-max trick: exactly a draw from their softmax). So a
row draws the same whichever rows share its batch, in whatever order, with no generator state:
a request served in a batch draws what it draws alone, and a CUDA graph replays draws with seeds
and counters as ordinary input tensors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    """How one stream is sampled."""

    temperature: float = 0.8
    """Softmax temperature; <= 0 means argmax (greedy)."""
    top_k: int = 50
    """Keep the k most likely tokens before drawing; <= 0 keeps all."""

    def __post_init__(self) -> None:
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError(f"top_k must be an integer, got {self.top_k!r}")
        if self.temperature != self.temperature:  # NaN
            raise ValueError("temperature must be a number, got NaN")


KEEP_ALL = 1 << 30
"""A top_k / filter_k that keeps every token."""


class TensorFields:
    """A frozen dataclass whose tensor fields also travel flat, in field order (a CUDA graph
    binds its inputs as a flat tuple of tensors); other fields stay as they are."""

    def tensor_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), Tensor))

    def tensors(self) -> tuple[Tensor, ...]:
        """The tensor fields' values, in field order."""
        return tuple(getattr(self, name) for name in self.tensor_names())

    def like(self, tensors: Sequence[Tensor]):
        """This object with its tensors replaced (in `tensors()` order), other fields kept."""
        names = self.tensor_names()
        if len(tensors) != len(names):
            raise ValueError(f"{type(self).__name__} has {len(names)} tensors ({', '.join(names)}), got {len(tensors)}")
        return dataclasses.replace(self, **dict(zip(names, tensors)))


@dataclass(frozen=True)
class RowSampling(TensorFields):
    """Sampling settings of R rows as tensors [R] on one device.

    `width` is how many top entries per row are looked at to find each row's k-th (the largest
    k in use, or the vocabulary for a fixed shape under CUDA graphs): a host number, so finding
    it costs no device read.
    """

    temperature: Tensor  # float32; <= 0: greedy
    top_k: Tensor  # long >= 1; KEEP_ALL keeps every token
    cfg_scale: Tensor  # float32; 1.0 for rows without guidance
    filter_k: Tensor  # long >= 1; KEEP_ALL for rows without guidance
    width: int

    @classmethod
    def of(
        cls, rows: Sequence[tuple[SamplingConfig, float, int]], vocab: int, device: torch.device | str, width: int | None = None
    ) -> RowSampling:
        """From (config, cfg_scale, cfg_filter_k) per row, for logits of `vocab` entries;
        width None: the largest k in use (the vocabulary when a row keeps every token)."""
        top_k = [c.top_k if 0 < c.top_k < vocab else KEEP_ALL for c, _, _ in rows]
        filter_k = [k if scale != 1.0 and k < vocab else KEEP_ALL for _, scale, k in rows]
        if any(t == f == KEEP_ALL for t, f in zip(top_k, filter_k)):
            width = width or vocab
        return cls(
            torch.tensor([c.temperature for c, _, _ in rows], dtype=torch.float32, device=device),
            torch.tensor(top_k, dtype=torch.long, device=device),
            torch.tensor([scale for _, scale, _ in rows], dtype=torch.float32, device=device),
            torch.tensor(filter_k, dtype=torch.long, device=device),
            width or max([k for k in (*top_k, *filter_k) if k != KEEP_ALL], default=1),
        )

    @classmethod
    def cat(cls, parts: Sequence[RowSampling]) -> RowSampling:
        """The rows of several, in order."""
        tensors = {name: torch.cat([getattr(p, name) for p in parts]) for name in parts[0].tensor_names()}
        return cls(**tensors, width=max(p.width for p in parts))


def draw(
    cond: Tensor,
    uncond: Tensor,
    params: RowSampling,
    seed: Tensor,
    counter: Tensor,
    banned: Tensor | None = None,
) -> Tensor:
    """One token per row. cond, uncond [R, V] float logits (uncond = cond for rows without
    guidance); seed, counter [R] long (the noise key); `banned` ids [n] are never drawn.
    Returns [R] long."""
    return draw_keyed(cond, uncond, params, noise_key(seed, counter), banned)


def draw_keyed(cond: Tensor, uncond: Tensor, params: RowSampling, key: Tensor, banned: Tensor | None = None) -> Tensor:
    """`draw` with the noise key [R] already made (`noise_key`; `stream_keys` makes a frame's at once)."""
    if banned is not None:
        # A finite floor, not -inf: CFG subtracts the branches, and -inf - -inf would be NaN.
        floor = torch.finfo(cond.dtype).min
        cond, uncond = cond.index_fill(-1, banned, floor), uncond.index_fill(-1, banned, floor)
    guided = uncond + params.cfg_scale[:, None] * (cond - uncond)
    filtered = cond.masked_fill(guided < _kth(guided, params.filter_k, params.width), float("-inf"))
    hot = params.temperature > 0
    tempered = filtered / torch.where(hot, params.temperature, 1.0)[:, None]
    # Top-k keeps tokens among the `width` largest entries (any others are -inf already): find
    # them once, cut each row's to its k, and noise them alone.
    values, tokens = tempered.topk(min(params.width, tempered.shape[-1]), dim=-1)
    values = values.masked_fill(values < _kth_sorted(values, params.top_k), float("-inf"))
    pick = (values + gumbel(key, tokens)).argmax(-1, keepdim=True)
    return torch.where(hot, tokens.gather(-1, pick)[:, 0], filtered.argmax(-1))


def _kth(x: Tensor, k: Tensor, width: int) -> Tensor:
    """Each row's k-th largest entry, -inf where k keeps all: x [R, V], k [R] -> [R, 1]."""
    return _kth_sorted(x.topk(min(width, x.shape[-1]), dim=-1).values, k)


def _kth_sorted(values: Tensor, k: Tensor) -> Tensor:
    """The k-th of each row's largest entries, sorted [R, width]; -inf where k > width."""
    width = values.shape[-1]
    kth = values.gather(-1, (k.clamp(max=width) - 1)[:, None])
    return torch.where(k[:, None] > width, float("-inf"), kth)


_M32 = 0xFFFFFFFF


def _mul32(x: Tensor, m: int) -> Tensor:
    """(x * m) mod 2**32 for x in [0, 2**32), without int64 overflow: in 16-bit halves."""
    return ((x & 0xFFFF) * m + (((x >> 16) * (m & 0xFFFF)) << 16)) & _M32


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) of x in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def noise_key(seed: Tensor, counter: Tensor) -> Tensor:
    """The 32-bit key of the draws keyed by (seed, counter), elementwise (any matching shapes)."""
    return _mix((seed & _M32) ^ _mix(((seed >> 32) & _M32) ^ _mix(counter & _M32)))


def uniform(seed: Tensor, counter: Tensor, tokens: Tensor) -> Tensor:
    """Uniform noise in (0, 1), float32, one per entry of tokens [R, n] (token ids): a pure
    function of (seed, counter, token id), so it is the same whichever tokens are asked for."""
    return keyed_uniform(noise_key(seed, counter), tokens)


def keyed_uniform(key: Tensor, tokens: Tensor) -> Tensor:
    """`uniform` from the rows' noise keys [R]."""
    # Token ids are < 2**17: the golden-ratio product fits int64, and spreads them over 32 bits.
    bits = _mix(key[:, None] ^ ((tokens * 0x9E3779B9) & _M32))
    # 23 bits: k + 0.5 is exact in float32, so u < 1 strictly (no infinite Gumbel noise).
    return ((bits >> 9).float() + 0.5) * (1.0 / (1 << 23))


def gumbel(key: Tensor, tokens: Tensor) -> Tensor:
    """Gumbel(0, 1) noise for tokens [R, n], from the rows' noise keys [R]."""
    return -torch.log(-torch.log(keyed_uniform(key, tokens)))


STREAMS = 256
"""Counters per frame: draw 0 is the action, 1 + k codebook k (any model with < 255 codebooks)."""


def counters(step: Tensor, stream: int) -> Tensor:
    """The noise counter of draw `stream` (0: action, 1 + k: codebook k) at frame `step` [R]:
    distinct for every (frame, stream), so no two draws of an utterance share their noise."""
    assert 0 <= stream < STREAMS, stream
    return step * STREAMS + stream


def stream_keys(seed: Tensor, step: Tensor, streams: range) -> Tensor:
    """The noise keys of draws `streams` at frame `step`, for seed/step [J]: [J, len(streams)],
    each what `noise_key(seed, counters(step, stream))` gives (a frame's codebooks keyed at once)."""
    assert 0 <= streams.start and streams.stop <= STREAMS, streams
    counter = step[:, None] * STREAMS + torch.arange(streams.start, streams.stop, device=step.device)
    return noise_key(seed[:, None], counter)


def sample_action(logits: Tensor, cond: Tensor, uncond: Tensor, params: RowSampling, seed: Tensor, step: Tensor) -> Tensor:
    """The action of J utterances from the rows' action logits [R, V_action] (last column):
    cond/uncond [J] are each utterance's rows. Returns [J] long."""
    return draw(logits[cond], logits[uncond], params, seed, counters(step, 0))

