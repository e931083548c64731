"""Mimi codec speed and streaming accuracy, on the real architecture with random weights.

    python bench/codec_stream.py [--seconds 10] [--stream-seconds 24] [--repeats 3] [--threads N]

Builds `MimiConfig()` (the `kyutai/mimi` geometry, 79M parameters; speed does not depend on the
weight values) with random codebooks, and prints one JSON object:
- one_shot: best-of-`repeats` wall time of `encode` and `decode` of `--seconds` of audio (batch 1),
  and their real-time factor (compute seconds per audio second; < 1 is faster than real time);
- stream: for chunks of 1, 2 and 5 frames, `push` latency per chunk (mean / p50 / p95 / max, ms;
  one frame is 80 ms of audio), streaming real-time factor, and the error of the concatenated
  pushes against a one-shot decode of the same codes (max abs, SNR dB). The stream runs over
  `--stream-seconds`, past the decoder's 250-step (10 s) attention window.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import MimiConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import best_time, describe  # noqa: E402

from dia2.audio.codec import MimiCodec  # noqa: E402
from dia2.tiny import build_random_mimi  # noqa: E402


def test_signal(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """A rising sine sweep plus noise, float [1, S]: structured enough that codes change."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    sweep = 0.4 * torch.sin(2 * math.pi * (120 + 40 * t) * t)
    return (sweep + 0.05 * torch.randn(t.shape, generator=gen))[None]


def bench_one_shot(codec: MimiCodec, wav: torch.Tensor, repeats: int) -> dict:
    seconds = wav.shape[-1] / codec.sample_rate
    codes = codec.encode(wav)
    encode_s = best_time(lambda: codec.encode(wav), repeats)
    decode_s = best_time(lambda: codec.decode(codes), repeats)
    return {
        "audio_seconds": seconds,
        "frames": codes.shape[-1],
        "encode_s": encode_s,
        "encode_rtf": encode_s / seconds,
        "decode_s": decode_s,
        "decode_rtf": decode_s / seconds,
    }


def bench_stream(codec: MimiCodec, codes: torch.Tensor, reference: torch.Tensor, chunk: int) -> dict:
    """Push `codes` [1, K, T] `chunk` frames at a time; time each push and compare with `reference`."""
    stream = codec.stream_decoder()
    stream.push(codes[..., :chunk])  # warm-up, then start over
    stream.flush()
    pieces, latencies = [], []
    for start in range(0, codes.shape[-1], chunk):
        began = time.perf_counter()
        pieces.append(stream.push(codes[..., start : start + chunk]))
        latencies.append(1000 * (time.perf_counter() - began))
    pieces.append(stream.flush())
    audio = torch.cat(pieces, dim=-1)
    assert audio.shape == reference.shape, (audio.shape, reference.shape)
    noise = (audio - reference).pow(2).sum().clamp_min(1e-30)
    ordered = sorted(latencies)
    return {
        "chunk_frames": chunk,
        "chunk_audio_ms": 1000 * chunk / codec.frame_rate,
        "chunks": len(latencies),
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_p50": ordered[len(ordered) // 2],
        "latency_ms_p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        "latency_ms_max": ordered[-1],
        "rtf": sum(latencies) / 1000 / (codes.shape[-1] / codec.frame_rate),
        "max_abs_err": float((audio - reference).abs().max()),
        "snr_db": float(10 * torch.log10(reference.pow(2).sum() / noise)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length for one-shot timing")
    parser.add_argument("--stream-seconds", type=float, default=24.0, help="audio length streamed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 5], help="frames per push")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.set_grad_enabled(False)
    # The machines are shared: a busy neighbour slows small-op-bound streaming most, so record it.
    load_before = os.getloadavg()[0]
    built = time.perf_counter()
    codec = MimiCodec(build_random_mimi(MimiConfig(), seed=0))
    built = time.perf_counter() - built
    one_shot = bench_one_shot(codec, test_signal(args.seconds, codec.sample_rate), args.repeats)
    codes = codec.encode(test_signal(args.stream_seconds, codec.sample_rate, seed=1))
    reference = codec.decode(codes)
    result = {
        "benchmark": "codec_stream",
        "machine": describe(),
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "model": "MimiConfig() random weights",
        "parameters": sum(p.numel() for p in codec.model.parameters()),
        "num_codebooks": codec.num_codebooks,
        "build_s": built,
        "one_shot": one_shot,
        "stream_frames": codes.shape[-1],
        "distinct_codes_per_codebook_min": min(codes[0, k].unique().numel() for k in range(codec.num_codebooks)),
        "reference_rms": float(reference.pow(2).mean().sqrt()),
        "stream": [bench_stream(codec, codes, reference, chunk) for chunk in args.chunks],
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
