"""Generation speed: the full loop against the bare model steps, and the time to first audio.

    python bench/generation.py [--config configs/models/dia2-100m.json] [--frames 64] [--cfg 2]
    python bench/generation.py --device cuda --config configs/models/dia2-2b.json --dtype bfloat16 --cuda-graph
    python bench/generation.py --device cuda --config configs/models/dia2-1b.json --low-vram 8bit --int8-threshold 0 --cuda-graph

Prints JSON: frames/s of (a) bare `step` + every `depformer_step` per frame on fixed tokens
(what the model alone costs) and (b) the full `FrameLoop` (sampling, CFG, state machine,
buffers, host sync), the loop's overhead = bare_fps / loop_fps - 1, and the time to first
streamed audio: from the start of a call to its first completed audio frame (prefill, then
max(delay) + 1 frames), plus that frame's decode by a full-size random Mimi (`MimiConfig()`,
79M parameters; `--no-mimi` leaves it out).

The frame kernels (with `--cuda-graph`, their CUDA graphs) are built once and kept for every run,
as `Dia2` keeps them, and reseeded in place before each: a first, untimed run builds and
captures them ("first_run_s"), so the timed runs measure replays, not captures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from dia2.generation.graphs import kernel_wrapper  # noqa: E402
from dia2.generation.config import GenerationConfig
from dia2.generation.kernels import FrameKernels  # noqa: E402
from dia2.generation.loop import FrameLoop, UtterancePlan  # noqa: E402
from dia2.model.config import load_config  # noqa: E402
from dia2.model.network import Dia2Model  # noqa: E402
from dia2.model.quant import MODES, int8_outlier_threshold  # noqa: E402
from dia2.text.script import TextTokenIds, parse_script  # noqa: E402
from dia2.text.state_machine import StateMachine  # noqa: E402
from dia2.text.tokenizer import load_tokenizer  # noqa: E402
from dia2.tiny import build_tiny_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = " ".join(["[S1] Hello there, how are you doing today?", "[S2] I am doing well, thank you for asking."] * 40)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_steps(model: Dia2Model, frames: int, branches: int) -> float:
    """Frames/s of the model alone: decoder step + all depformer stages, no sampling."""
    cfg = model.config
    state = model.new_state(branches, frames + 1)
    column = torch.full((branches, cfg.data.channels, 1), 5, dtype=torch.long, device=model.device)
    token = torch.full((branches,), 5, dtype=torch.long, device=model.device)
    sync(model.device)
    start = time.perf_counter()
    for _ in range(frames):
        out = model.step(column, state)
        hidden = out.hidden[:, -1]
        for s in range(cfg.num_depformer_stages):
            model.depformer_step(s, hidden, token, state)
    sync(model.device)
    return frames / (time.perf_counter() - start)


def full_loop(model: Dia2Model, machine: StateMachine, entries, config: GenerationConfig, kernels: FrameKernels) -> dict:
    """One call on the kept kernels: frames/s, and seconds to the first completed audio frame."""
    sync(model.device)
    start = time.perf_counter()
    loop = FrameLoop(model, UtterancePlan(machine, machine.new_state(entries), config), kernels=kernels, seed=0)
    n, first_frame_s, first_codes = 0, None, None
    for update in loop:
        n += 1
        if first_codes is None and update.frames.shape[-1]:
            first_codes = update.frames[:, :1]
            sync(model.device)
            first_frame_s = time.perf_counter() - start
    sync(model.device)
    return {"frames_per_s": n / (time.perf_counter() - start), "first_frame_s": first_frame_s, "first_codes": first_codes}


def mimi_first_push_s(codes: torch.Tensor, device: torch.device) -> float:
    """Seconds a fresh stream decoder of the full-size Mimi takes for the first frame [K, 1], in
    float32 as `Dia2` runs it whatever the model's dtype."""
    from transformers import MimiConfig

    from dia2.audio.codec import MimiCodec
    from dia2.tiny import build_random_mimi

    codec = MimiCodec(build_random_mimi(MimiConfig(), seed=0).to(device), num_codebooks=codes.shape[0])
    codes = codes.clamp(max=codec.model.config.codebook_size - 1)  # random weights: any code will do
    codec.stream_decoder().push(codes[None])  # warm-up: kernels chosen, allocator primed
    best = float("inf")
    for _ in range(3):
        decoder = codec.stream_decoder()
        sync(device)
        start = time.perf_counter()
        decoder.push(codes[None])
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Dia2Model:
    cfg = load_config(args.config)
    torch.manual_seed(0)
    if not args.low_vram:
        return Dia2Model.from_config(cfg, dtype=dtype, device=device).eval()
    from dia2.model.quant import quantize

    # As Dia2.from_repo does: built on the CPU, quantized layer by layer onto the device.
    model = Dia2Model.from_config(cfg, dtype=dtype, device="cpu").eval()
    threshold = args.int8_threshold if args.low_vram == "8bit" else None
    return quantize(model, args.low_vram, device=device, int8_threshold=threshold)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/models/dia2-100m.json")
    p.add_argument("--frames", type=int, default=64, help="frames per timed call (the script is cut there)")
    p.add_argument("--cfg", type=float, default=2.0, help="CFG scale (1: one branch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bfloat16 on CUDA, else float32")
    p.add_argument("--cuda-graph", action="store_true")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--low-vram", choices=MODES, default=None, help="bitsandbytes 8-bit or 4-bit block linears")
    p.add_argument("--int8-threshold", type=float, default=None, help="8-bit outlier threshold (0: none, as CUDA graphs need)")
    p.add_argument("--no-mimi", action="store_true", help="leave Mimi's first-frame decode out of the time to first audio")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    args = p.parse_args(argv)
    if args.int8_threshold is not None and args.low_vram != "8bit":
        p.error("--int8-threshold needs --low-vram 8bit")
    if args.frames < 1 or args.repeats < 1 or (args.threads is not None and args.threads < 1):
        p.error("--frames, --repeats and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    model = build_model(args, device, dtype)
    cfg = model.config
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_tokenizer(tmp))
    ids = TextTokenIds.from_tokenizer(cfg.data, tokenizer)
    entries = parse_script(SCRIPT, tokenizer, ids)
    machine = StateMachine.from_config(cfg.data, ids)
    config = GenerationConfig(cfg_scale=args.cfg, max_frames=args.frames, seed=0)
    kernels = FrameKernels(model, config)
    wrapper = kernel_wrapper(args.cuda_graph, args.torch_compile)
    logging.getLogger("dia2.generation.loop").setLevel(logging.ERROR)  # every run is cut at --frames on purpose
    with torch.inference_mode():
        if wrapper is not None:
            kernels = wrapper(kernels)
        bare_steps(model, 4, config.branches)  # warm-up
        started = time.perf_counter()
        full_loop(model, machine, entries, config, kernels)  # builds, compiles or captures: untimed
        first_run_s = time.perf_counter() - started
        bare = max(bare_steps(model, args.frames, config.branches) for _ in range(args.repeats))
        runs = [full_loop(model, machine, entries, config, kernels) for _ in range(args.repeats)]
        # None when --frames ends before the first audio frame completes (max(delay) + 1 frames).
        first_frame_s = min((r["first_frame_s"] for r in runs if r["first_frame_s"] is not None), default=None)
        measure_mimi = not args.no_mimi and first_frame_s is not None
        mimi_s = mimi_first_push_s(runs[0]["first_codes"], device) if measure_mimi else None
    loop = max(r["frames_per_s"] for r in runs)
    result = {
        "benchmark": "generation_loop",
        "machine": describe(),
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "low_vram": args.low_vram,
        "int8_threshold": int8_outlier_threshold(model) if args.low_vram == "8bit" else None,
        "cfg_scale": args.cfg,
        "branches": config.branches,
        "frames": args.frames,
        "cuda_graph": args.cuda_graph,
        "torch_compile": args.torch_compile,
        "threads": torch.get_num_threads(),
        "first_run_s": first_run_s,
        "bare_model_frames_per_s": bare,
        "loop_frames_per_s": loop,
        "loop_overhead": bare / loop - 1,
        "real_time_factor": loop / 12.5,
        "first_audio_frame_s": first_frame_s,
        "mimi_first_frame_s": mimi_s,
        "time_to_first_audio_s": None if mimi_s is None else first_frame_s + mimi_s,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
