"""Generation-loop overhead: the full loop against the bare model steps, same run, same model.

    python bench/generation.py [--config configs/models/dia2-100m.json] [--frames 64] [--cfg 2]
    python bench/generation.py --device cuda --config configs/models/dia2-2b.json --cuda-graph

Prints JSON: frames/s of (a) bare `step` + every `depformer_step` per frame on fixed tokens
(what the model alone costs) and (b) the full `FrameLoop` (sampling, CFG, state machine,
buffers, host sync), and the loop's overhead = bare_fps / loop_fps - 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from dia2.generation.graphs import kernel_wrapper  # noqa: E402
from dia2.generation.loop import FrameKernels, FrameLoop, GenerationConfig  # noqa: E402
from dia2.model.config import load_config  # noqa: E402
from dia2.model.network import Dia2Model  # noqa: E402
from dia2.text.script import TextTokenIds, parse_script  # noqa: E402
from dia2.text.state_machine import StateMachine  # noqa: E402
from dia2.text.tokenizer import build_tiny_tokenizer, load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = " ".join(["[S1] Hello there, how are you doing today?", "[S2] I am doing well, thank you for asking."] * 40)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def full_loop(model: Dia2Model, machine: StateMachine, entries, config: GenerationConfig, wrapper) -> float:
    kernels = FrameKernels(model, config, torch.Generator(device=model.device).manual_seed(0))
    if wrapper is not None:
        kernels = wrapper(kernels)
    loop = FrameLoop(model, machine, machine.new_state(entries), config, kernels=kernels)
    sync(model.device)
    start = time.perf_counter()
    n = 0
    for update in loop:
        n += 1
    sync(model.device)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs/models/dia2-100m.json")
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--cfg", type=float, default=2.0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--cuda-graph", action="store_true")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = Dia2Model.from_config(cfg, dtype=dtype, device=device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_tokenizer(tmp))
    ids = TextTokenIds.from_tokenizer(cfg.data, tokenizer)
    entries = parse_script(SCRIPT, tokenizer, ids)
    machine = StateMachine.from_config(cfg.data, ids)
    config = GenerationConfig(cfg_scale=args.cfg, max_frames=args.frames, seed=0)
    wrapper = kernel_wrapper(args.cuda_graph, args.torch_compile)
    import logging

    logging.getLogger("dia2.generation.loop").setLevel(logging.ERROR)  # every run is cut at --frames on purpose
    with torch.inference_mode():
        bare_steps(model, 4, config.branches)  # warm-up
        full_loop(model, machine, entries, config, wrapper)
        bare = max(bare_steps(model, args.frames, config.branches) for _ in range(args.repeats))
        loop = max(full_loop(model, machine, entries, config, wrapper) for _ in range(args.repeats))
    result = {
        "benchmark": "generation_loop",
        "machine": describe(),
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "cfg_scale": args.cfg,
        "branches": config.branches,
        "frames": args.frames,
        "cuda_graph": args.cuda_graph,
        "torch_compile": args.torch_compile,
        "bare_model_frames_per_s": bare,
        "loop_frames_per_s": loop,
        "loop_overhead": bare / loop - 1,
        "real_time_factor": loop / 12.5,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
