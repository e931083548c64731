"""The delayed token grid (spec section 4).

A grid column holds C = K + 2 tokens: channel 0 is the main text stream, channel 1 the second
(look-ahead) text stream, channels 2..K+1 are Mimi codebooks 0..K-1. The audio channels are
delayed: codebook c at column t holds audio frame t - delay[c], so that the depformer predicts the
fine codebooks of a frame after the coarse ones have been seen for a few frames.

Everything here is pure tensor logic shared by training (building the teacher-forced grid) and
inference (filling the model input, undelaying the generated codes). It works on a single grid
[K, T] / [C, T] or a batch [B, K, T] / [B, C, T] alike.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor

TEXT_CHANNELS = 2
"""Channels before the first codebook in a full grid: main text, second text."""


def _check_delays(delays: Sequence[int], num_codebooks: int) -> list[int]:
    delays = [int(d) for d in delays]
    if len(delays) != num_codebooks:
        raise ValueError(f"got {len(delays)} delays for {num_codebooks} codebooks; give one delay per codebook")
    if any(d < 0 for d in delays):
        raise ValueError(f"delays must be non-negative, got {delays}")
    return delays


def delay_codes(codes: Tensor, delays: Sequence[int], pad: int) -> Tensor:
    """Shift each codebook right by its delay.

    codes [K, T] or [B, K, T] -> delayed [..., K, T + max(delays)] with
    `delayed[c, delays[c] + f] = codes[c, f]` and every other cell `pad`.
    """
    if codes.dim() not in (2, 3):
        raise ValueError(f"codes must be [K, T] or [B, K, T], got shape {tuple(codes.shape)}")
    num_codebooks, frames = codes.shape[-2], codes.shape[-1]
    delays = _check_delays(delays, num_codebooks)
    max_delay = max(delays, default=0)
    delayed = codes.new_full((*codes.shape[:-1], frames + max_delay), pad)
    for c, delay in enumerate(delays):
        delayed[..., c, delay : delay + frames] = codes[..., c, :]
    return delayed


def undelay_codes(delayed: Tensor, delays: Sequence[int]) -> Tensor:
    """Inverse of `delay_codes`: align every codebook back onto audio frames.

    delayed [K, L] or [B, K, L] -> codes [..., K, max(0, L - max(delays))] with
    `codes[c, f] = delayed[c, delays[c] + f]`. Every output cell is read from the input, so no
    pad value is needed; the last max(delays) columns only ever hold the tails of the shorter
    delays and are dropped. Decoding calls this every frame on a window of the delayed buffer, so
    it is one gather whose delay index is built on the device once (no host-to-device copy).
    """
    if delayed.dim() not in (2, 3):
        raise ValueError(f"delayed codes must be [K, L] or [B, K, L], got shape {tuple(delayed.shape)}")
    num_codebooks, columns = delayed.shape[-2], delayed.shape[-1]
    delays = _check_delays(delays, num_codebooks)
    frames = max(0, columns - max(delays, default=0))
    index = _delay_index(tuple(delays), delayed.device)[:, None] + torch.arange(frames, device=delayed.device)
    return delayed.gather(-1, index.expand(*delayed.shape[:-1], frames))


def cell_frames(delays: Sequence[int], columns: int, start: int = 0, device: torch.device | str | None = None) -> Tensor:
    """The audio frame each delayed cell holds: [K, columns] long, `start + t - delays[c]` for
    grid column start + t. Negative frames lie before their codebook's delay: those cells hold
    audio bos as model input, in training and in decoding alike."""
    delays = _check_delays(delays, len(delays))
    column = torch.arange(start, start + columns, device=device)
    return column[None, :] - _delay_index(tuple(delays), torch.device(device or "cpu"))[:, None]


def drop_text(tokens: Tensor, zero: int, pad: int) -> Tensor:
    """The unconditional (classifier-free guidance) branch's input: main text -> `zero`, second
    text -> `pad`, at every column. Training drops text this way and decoding's unconditional
    row reads exactly this.

    tokens [..., C, L] with the text streams in channels 0 and 1 (C >= 2) -> a new tensor;
    every other channel untouched.
    """
    if tokens.dim() < 2 or tokens.shape[-2] < TEXT_CHANNELS:
        raise ValueError(f"tokens must be [..., C, L] with C >= {TEXT_CHANNELS}, got shape {tuple(tokens.shape)}")
    dropped = tokens.clone()
    dropped[..., 0, :] = zero
    dropped[..., 1, :] = pad
    return dropped


@functools.lru_cache(maxsize=16)
def _delay_index(delays: tuple[int, ...], device: torch.device) -> Tensor:
    """delays as a [K] long tensor on `device`, built once per pattern and device: decoding reads
    it every frame, and building it from a list each time would copy host to device (a sync)."""
    with torch.inference_mode(False):  # a normal tensor even when generation builds it first
        return torch.tensor(delays, dtype=torch.long, device=device)


def mask_audio_bos(tokens: Tensor, delays: Sequence[int], bos: int, start: int = 0) -> Tensor:
    """Model input: replace every audio cell that lies before its codebook's delay with `bos`.

    tokens is either audio only, [K, T] / [B, K, T], or a full grid, [C, T] / [B, C, T] with
    C = K + 2 and the codebooks in channels 2..K+1 (told apart by the channel count, which is
    unambiguous since the two always differ). `start` is the grid column of tokens[..., 0], so a
    single decoding column can be masked with start=t. Returns a new tensor of the same shape.
    """
    if tokens.dim() not in (2, 3):
        raise ValueError(f"tokens must be [C, T] or [B, C, T], got shape {tuple(tokens.shape)}")
    channels, columns = tokens.shape[-2], tokens.shape[-1]
    delays = [int(d) for d in delays]
    if channels == len(delays):
        offset = 0
    elif channels == len(delays) + TEXT_CHANNELS:
        offset = TEXT_CHANNELS
    else:
        raise ValueError(
            f"tokens have {channels} channels but there are {len(delays)} delays: expected "
            f"{len(delays)} (audio only) or {len(delays) + TEXT_CHANNELS} (full grid)"
        )
    before_delay = cell_frames(delays, columns, start, tokens.device) < 0  # [K, T]
    masked = tokens.clone()
    audio = masked[..., offset : offset + len(delays), :]
    audio.masked_fill_(before_delay.expand_as(audio), bos)
    return masked
