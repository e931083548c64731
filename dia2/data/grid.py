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

from typing import Sequence

import torch
from torch import Tensor

FRAME_RATE = 12.5
"""Mimi frames per second, which is also grid columns per second (24 kHz / 1920 samples)."""

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
    delays and are dropped.
    """
    if delayed.dim() not in (2, 3):
        raise ValueError(f"delayed codes must be [K, L] or [B, K, L], got shape {tuple(delayed.shape)}")
    num_codebooks, columns = delayed.shape[-2], delayed.shape[-1]
    delays = _check_delays(delays, num_codebooks)
    frames = max(0, columns - max(delays, default=0))
    codes = delayed.new_empty((*delayed.shape[:-1], frames))
    for c, delay in enumerate(delays):
        codes[..., c, :] = delayed[..., c, delay : delay + frames]
    return codes


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
    delays = _check_delays(delays, len(delays))
    column = torch.arange(start, start + columns, device=tokens.device)
    delay = torch.tensor(delays, device=tokens.device)
    before_delay = column.unsqueeze(0) < delay.unsqueeze(1)  # [K, T]
    masked = tokens.clone()
    audio = masked[..., offset : offset + len(delays), :]
    audio.masked_fill_(before_delay.expand_as(audio), bos)
    return masked
