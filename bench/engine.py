"""Serving engine throughput: frames/s at 1, 2, 4, 8 concurrent streams, and the time to first
audio of a request joining a busy engine.

    python bench/engine.py [--streams 1,2,4,8] [--frames 16] [--repeats 3] [--threads N]
    python bench/engine.py --quick      # tiny model, few frames: a smoke test
    python bench/engine.py --torch-compile --streams 1,4   # compiled frames (EngineConfig.torch_compile)
    python bench/engine.py --no-packed-weights   # eager CPU frames on the plain weights (EngineConfig.packed_weights)

For each stream count n: an `Engine` with n slots, n requests submitted at once (different
seeds, a long script, CFG), one engine step to prefill them all, a few untimed warm-up steps,
then `--frames` timed `engine.step()`s (best of `--repeats` windows). Every stream advances one
frame per step, so aggregate frames/s = n * steps / seconds; each stream's `FrameUpdate`s are
counted to check that no stream ended or stalled inside a window. speedup_vs_1 is the aggregate
against one stream (issue 9's target: >= 2.5 at n = 4).

Time to first audio: an engine with 5 slots runs 4 streams in its own thread (`start()`); a 5th
request is submitted and timed until its first update (the prefill) and until its first update
holding a completed audio frame (max(delay) + 1 frames later). Median over `--joins` joins, each
cancelled before the next. Codes only: no Mimi decode (bench/generation.py measures that).

With `--torch-compile` one engine (as many slots as the most streams asked for, or the join
test's) serves every point: its frames compile once, on the untimed warm-up ("compile_s"), for
every batch size, and "recompiles" counts the graphs dynamo compiled after that (0 when streams
joining and leaving reuse them).

The model has random weights (`--config` geometry; float32 eager CPU by default, or `--device
cuda --dtype bfloat16 --cuda-graph` as bench/gpu_check.py runs it); the tokenizer and the Mimi
are the tiny seeded stand-ins of `dia2.tiny` (the codec is only needed to build a `Dia2`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe

from dia2.audio.codec import MimiCodec
from dia2.generation.config import GenerationConfig
from dia2.generation.tts import Dia2
from dia2.model.config import load_config, parse_config
from dia2.model.network import Dia2Model
from dia2.serving.engine import Engine, EngineConfig, Handle, Request
from dia2.text.tokenizer import load_tokenizer
from dia2.tiny import TINY_GEOMETRY, build_tiny_mimi, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 3
TARGET_STREAMS, TARGET_SPEEDUP = 4, 2.5
BUSY_STREAMS = 4
# Long enough that no stream ends inside a timed window even at the fastest pace (~1,040 frames):
# streams run uncapped and are cancelled when measured.
SCRIPT = " ".join(["[S1] Hello there, how are you doing today?", "[S2] I am doing well, thank you for asking."] * 20)


def build_tts(config: Path | None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Dia2:
    """A `Dia2` on a random-weight model (`config`, or the tiny geometry when None), the tiny
    tokenizer (its ids fit any Dia2 text vocab) and a tiny Mimi with the model's codebooks."""
    cfg = parse_config(TINY_GEOMETRY) if config is None else load_config(config)
    torch.manual_seed(0)
    model = Dia2Model.from_config(cfg, dtype=dtype, device=device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_tokenizer(tmp))
    mimi = build_tiny_mimi(seed=0, num_codebooks=cfg.num_codebooks).to(device)
    return Dia2(model, tokenizer, MimiCodec(mimi, num_codebooks=cfg.num_codebooks))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def drain(handle: Handle) -> tuple[int, bool]:
    """Updates a handle holds now (the engine is not running), and whether one ended it."""
    updates = handle.poll()
    return len(updates), any(u.done for u in updates)


def throughput(
    tts: Dia2, streams: int, frames: int, repeats: int, cfg_scale: float, config: EngineConfig = EngineConfig(),
    engine: Engine | None = None,
) -> dict:
    """Engine steps/s with `streams` requests generating at once; best of `repeats` windows (on
    `engine` when given, else on an engine of `config` with `streams` slots)."""
    engine = engine or Engine(tts, replace(config, slots=streams))
    handles = [engine.submit(Request(SCRIPT, GenerationConfig(cfg_scale=cfg_scale, seed=seed))) for seed in range(streams)]
    for _ in range(1 + WARMUP_STEPS):  # the first step prefills every request and advances it
        engine.step()
    for handle in handles:
        drain(handle)
    windows = []
    for _ in range(repeats):
        sync(tts.model.device)
        start = time.perf_counter()
        for _ in range(frames):
            engine.step()
        sync(tts.model.device)
        windows.append(time.perf_counter() - start)
        for handle in handles:
            count, done = drain(handle)
            if count != frames or done:
                raise RuntimeError(f"{handle} gave {count} updates in a window of {frames} steps (done: {done})")
    for handle in handles:
        handle.cancel()
    engine.step()  # frees the slots
    best = min(windows)
    return {
        "streams": streams,
        "rows": streams * GenerationConfig(cfg_scale=cfg_scale).branches,
        "step_s": best / frames,
        "aggregate_frames_per_s": streams * frames / best,
        "per_stream_frames_per_s": frames / best,
        "windows_s": windows,
    }


def join_busy_engine(
    tts: Dia2, joins: int, cfg_scale: float, busy_streams: int = BUSY_STREAMS, config: EngineConfig = EngineConfig(),
    engine: Engine | None = None,
) -> dict:
    """Seconds from submitting a request to an engine running `busy_streams` others until its
    first update (prefill) and its first completed audio frame; median over `joins` (on `engine`
    when given, else on one of `config` with busy_streams + 1 slots)."""
    engine = (engine or Engine(tts, replace(config, slots=busy_streams + 1))).start()
    busy = [engine.submit(Request(SCRIPT, GenerationConfig(cfg_scale=cfg_scale, seed=100 + i))) for i in range(busy_streams)]
    for handle in busy:  # every busy stream prefilled and a few frames in
        updates = handle.updates(timeout=600)
        for _ in range(1 + WARMUP_STEPS):
            next(updates)
    first_update, first_audio, frames_to_audio = [], [], []
    try:
        for seed in range(joins):
            start = time.perf_counter()
            handle = engine.submit(Request(SCRIPT, GenerationConfig(cfg_scale=cfg_scale, seed=seed)))
            for n, update in enumerate(handle.updates(timeout=600)):
                if n == 0:
                    first_update.append(time.perf_counter() - start)
                if update.frames.shape[-1]:
                    first_audio.append(time.perf_counter() - start)
                    frames_to_audio.append(n)
                    break
            handle.cancel()
            handle.finished.wait()
            ended = [h for h in busy if h.finished.is_set()]
            if ended:
                raise RuntimeError(f"busy stream(s) {ended} ended during the joins: use a longer script")
    finally:
        for handle in busy:
            handle.cancel()
        engine.stop()
    return {
        "busy_streams": busy_streams,
        "joins": joins,
        "first_update_s": statistics.median(first_update),
        "first_audio_frame_s": statistics.median(first_audio),
        "frames_to_first_audio": frames_to_audio[0],
        "first_audio_frame_all_s": first_audio,
    }


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/models/dia2-100m.json")
    p.add_argument("--streams", default="1,2,4,8", help="comma-separated concurrent stream counts")
    p.add_argument("--frames", type=int, default=16, help="timed engine steps per window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per stream count (best is kept)")
    p.add_argument("--joins", type=int, default=3, help="requests joining the busy engine (median is kept)")
    p.add_argument("--cfg", type=float, default=2.0, help="CFG scale (1: one branch)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="tiny model, 4 frames, 1 repeat, 1 join: a smoke test")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--cuda-graph", action="store_true", help="replay each frame from CUDA graphs (EngineConfig.cuda_graph)")
    p.add_argument("--torch-compile", action="store_true", help="compiled frames, one engine for every point (EngineConfig.torch_compile)")
    p.add_argument("--no-packed-weights", action="store_true", help="eager CPU frames multiply by the plain weights (EngineConfig.packed_weights off)")
    p.add_argument("--busy", type=int, default=BUSY_STREAMS, help="streams running while requests join")
    args = p.parse_args(argv)
    try:
        args.streams = sorted({int(s) for s in args.streams.split(",")})
    except ValueError:
        p.error(f"--streams takes comma-separated integers, got {args.streams!r}")
    if args.quick:
        args.config, args.frames, args.repeats, args.joins = None, 4, 1, 1
    if min(args.streams) < 1 or min(args.frames, args.repeats, args.joins, args.threads) < 1:
        p.error("--streams, --frames, --repeats, --joins and --threads must be at least 1")
    if args.cuda_graph and args.torch_compile:
        p.error("--cuda-graph and --torch-compile: pick one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    tts = build_tts(args.config, args.device, dtype)
    shared, compile_s, recompiles = None, None, None
    engine_config = EngineConfig(cuda_graph=args.cuda_graph, packed_weights=not args.no_packed_weights)
    if args.torch_compile:
        shared = Engine(tts, replace(engine_config, slots=max(max(args.streams), args.busy + 1), torch_compile=True))
    with torch.inference_mode():
        started = time.perf_counter()
        throughput(tts, 1, 2, 1, args.cfg, engine_config, shared)  # warm-up: allocator and kernels (compiled), untimed
        if shared is not None:
            compile_s, compiled = time.perf_counter() - started, compiled_graphs()
        points = [throughput(tts, n, args.frames, args.repeats, args.cfg, engine_config, shared) for n in args.streams]
    base = next((p["aggregate_frames_per_s"] for p in points if p["streams"] == 1), None)
    for point in points:
        point["speedup_vs_1"] = None if base is None else point["aggregate_frames_per_s"] / base
    at_target = next((p["speedup_vs_1"] for p in points if p["streams"] == TARGET_STREAMS), None)
    join = join_busy_engine(tts, args.joins, args.cfg, args.busy, engine_config, shared)
    if shared is not None:
        recompiles = compiled_graphs() - compiled
    config = "tiny (dia2.tiny)" if args.config is None else args.config
    if isinstance(config, Path) and config.is_relative_to(ROOT):
        config = config.relative_to(ROOT)
    result = {
        "benchmark": "serving_engine",
        "machine": describe(),
        "config": str(config),
        "parameters": sum(p.numel() for p in tts.model.parameters()),
        "dtype": args.dtype,
        "device": args.device,
        "cuda_graph": args.cuda_graph,
        "torch_compile": args.torch_compile,
        "packed_weights": engine_config.packed_weights,
        "threads": args.threads,
        "compile_s": compile_s,
        "recompiles": recompiles,
        "real_time_frames_per_s": 12.5,
        "streams_faster_than_real_time": [p["streams"] for p in points if p["per_stream_frames_per_s"] >= 12.5],
        "cfg_scale": args.cfg,
        "frames": args.frames,
        "repeats": args.repeats,
        "points": points,
        f"speedup_at_{TARGET_STREAMS}": at_target,
        f"target_speedup_{TARGET_SPEEDUP}_at_{TARGET_STREAMS}_met": None if at_target is None else at_target >= TARGET_SPEEDUP,
        "join_busy_engine": join,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
