"""Trainer step throughput and memory: LoRA vs full fine-tuning (vs QLoRA), the trainer's own step.

    python bench/train.py                                   # CPU, configs/models/dia2-100m.json, lora + full
    python bench/train.py --device cuda --config configs/models/dia2-2b.json --precision bf16 \\
        --batch 8 --seconds 30 --checkpointing --modes lora,qlora

One step is what finetune/train.py runs per batch: forward over a B x C x L grid, the weighted
masked loss of finetune.losses (action, cb0, every depformer stage), backward, AdamW step. The
model has random weights (speed does not depend on their values); LoRA uses the trainer's
defaults (finetune.config.LoraSection: rank 16, default target modules).

Each mode runs in a fresh subprocess, and peaks are reset before each timed step, so that its
peak memory is its training step's own: peak RSS on the CPU, torch.cuda.max_memory_allocated on
CUDA. Prints one JSON object: per mode frames/s, seconds per step, model FLOPs per step (torch's
FlopCounterMode over forward + backward without checkpointing's recompute) and their rate as a
fraction of the dense matmul peak measured in the same run (MFU); the FLOPs the step executed,
recompute included (`executed_flops_per_step`, HFU); and peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, matmul_peak_flops  # noqa: E402

from dia2.data.teacher import Batch  # noqa: E402
from dia2.model.config import FRAME_RATE, Dia2Config, load_config  # noqa: E402
from dia2.model.network import Dia2Model  # noqa: E402
from finetune.config import LoraSection, LossSection  # noqa: E402
from finetune.losses import training_loss  # noqa: E402
from finetune.modeling import make_trainable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("lora", "full", "qlora")


def random_batch(cfg: Dia2Config, batch: int, columns: int, device: str) -> Batch:
    """A full batch of random grids (every target real): the trainer's batch at its largest."""
    g = torch.Generator().manual_seed(0)
    d = cfg.data
    tokens = torch.empty(batch, d.channels, columns, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, d.text_vocab_size, (batch, 2, columns), generator=g)
    tokens[:, 2:] = torch.randint(0, d.audio_vocab_size - 2, (batch, d.num_codebooks, columns), generator=g)
    action = torch.randint(0, 2, (batch, columns - 1), generator=g)
    every = torch.ones(batch, columns - 1, dtype=torch.bool)
    audio_mask = every[:, None].expand(batch, d.num_codebooks, columns - 1).contiguous()
    return Batch(tokens, action, every, tokens[:, 2:, 1:].contiguous(), audio_mask).to(device)


def child(args: argparse.Namespace) -> dict:
    """Build the mode's model and time its training step; runs in its own process."""
    cfg = load_config(args.config)
    device, mode = args.device, args.child
    bf16 = args.precision == "bf16"
    torch.manual_seed(0)
    baseline_rss = _peak_rss_mb()
    # As the trainer's model.dtype=auto: frozen LoRA bases in bf16 on CUDA, trained weights float32.
    weights = torch.bfloat16 if bf16 and mode != "full" else torch.float32
    model = Dia2Model.from_config(cfg, dtype=weights, device="cpu" if mode == "qlora" else device)
    if mode == "qlora":
        from dia2.model.quant import quantize

        model = quantize(model, "4bit", device=device)
    model.set_gradient_checkpointing(args.checkpointing)
    trainable = make_trainable(model, LoraSection(full_finetune=mode == "full"), "bench").train()
    params = [p for p in trainable.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    columns = args.frames or math.ceil(args.seconds * FRAME_RATE) + max(cfg.data.delays)
    batch = random_batch(cfg, args.batch, columns, device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def backward(rows: Batch) -> None:
        with autocast:
            loss = training_loss(trainable(rows.tokens), rows, LossSection(), cfg.data.action_pad_token_id).loss
        loss.backward()

    def step() -> None:
        backward(batch)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state allocated, kernels chosen
    model_flops = _model_flops(model, backward, random_batch(cfg, 1, columns, device), args)
    optimizer.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        step()  # what the GPU executes: with checkpointing, the forward runs twice
    _sync(device)
    # The machine may be shared: the matmul peak is measured between the timed steps, under the
    # same load, and both are best-of-repeats. Memory peaks are reset after each measurement, so
    # the reported peak is the training step's own (8192^2 matmul buffers would otherwise count).
    peak, seconds, step_gb, step_rss = 0.0, math.inf, 0.0, 0.0
    for _ in range(args.repeats):
        peak = max(peak, matmul_peak_flops(args.peak_dtype, n=8192 if device.startswith("cuda") else 2048, repeats=5, device=device))
        _reset_peaks(device)
        started = time.perf_counter()
        step()
        _sync(device)
        seconds = min(seconds, time.perf_counter() - started)
        step_rss = max(step_rss, _peak_rss_mb())
        if device.startswith("cuda"):
            step_gb = max(step_gb, torch.cuda.max_memory_allocated(device) / 2**30)
    executed = counter.get_total_flops()
    result = {
        "mode": mode,
        "trainable_parameters": sum(p.numel() for p in params),
        "seconds_per_step": seconds,
        "frames_per_s": args.batch * columns / seconds,
        "flops_per_step": model_flops,
        "flops_per_s": model_flops / seconds,
        "executed_flops_per_step": executed,
        "matmul_peak_flops_per_s": peak,
        "mfu": model_flops / seconds / peak,
        "hfu": executed / seconds / peak,
        "peak_rss_mb": step_rss,
        "rss_before_model_mb": baseline_rss,
    }
    if device.startswith("cuda"):
        result["peak_gpu_memory_gb"] = step_gb
    return result


def _model_flops(model: Dia2Model, backward: Callable[[Batch], None], one_row: Batch, args: argparse.Namespace) -> int:
    """Model FLOPs of one training step (MFU's numerator): forward + backward as the model
    defines them, without the recompute of gradient checkpointing, which would overstate MFU.

    Counted on one row with checkpointing off (the memory of one row's activations, not the
    batch's), times the batch: every row has the same columns, so each counted op (matmuls,
    attention) scales exactly with the rows.
    """
    model.set_gradient_checkpointing(False)
    try:
        with FlopCounterMode(display=False) as counter:
            backward(one_row)
    finally:
        model.set_gradient_checkpointing(args.checkpointing)
    return counter.get_total_flops() * args.batch


def _reset_peaks(device: str) -> None:
    """Start a new memory phase: the process's peak RSS (Linux `clear_refs`) and CUDA's peak."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS


def _peak_rss_mb() -> float:
    """Peak RSS since the last `_reset_peaks` (VmHWM; getrusage's maximum cannot be reset)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/models/dia2-100m.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=256, help="grid columns per utterance (0: use --seconds)")
    parser.add_argument("--seconds", type=float, default=30.0, help="utterance length when --frames is 0")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--modes", default="lora,full", help=f"comma-separated, from {', '.join(MODES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (best counts), each after a peak measurement")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.peak_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if args.child:
        print(json.dumps(child(args)))
        return 0

    forwarded = list(argv if argv is not None else sys.argv[1:])
    # A fixed mmap threshold makes glibc return every large freed block at once, so that peak RSS
    # follows the tensors alive at once rather than the allocator's high-water mark.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    modes = {}
    for mode in args.modes.split(","):
        proc = subprocess.run([sys.executable, __file__, *forwarded, "--child", mode], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"mode {mode} failed:\n{proc.stderr[-3000:]}")
        modes[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg_path = args.config.resolve()
    report = {
        "benchmark": "train",
        "machine": describe(),
        "config": str(cfg_path.relative_to(ROOT) if cfg_path.is_relative_to(ROOT) else cfg_path),
        "parameters": sum(p.numel() for p in Dia2Model.from_config(load_config(args.config), device="meta").parameters()),
        "device": args.device,
        "precision": args.precision,
        "batch": args.batch,
        "columns_per_utterance": args.frames or math.ceil(args.seconds * FRAME_RATE) + max(load_config(args.config).data.delays),
        "gradient_checkpointing": args.checkpointing,
        "modes": modes,
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
