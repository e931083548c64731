"""Trainer step throughput and memory: LoRA vs full fine-tuning (vs QLoRA), the trainer's own step.

    python bench/train.py                                   # CPU, configs/models/dia2-100m.json, lora + full
    python bench/train.py --device cuda --config configs/models/dia2-2b.json --precision bf16 \\
        --batch 8 --seconds 30 --checkpointing --modes lora,qlora

One step is what finetune/train.py runs per batch: forward over a B x C x L grid, the weighted
masked loss of finetune.losses (action, cb0, every depformer stage), backward, AdamW step. The
model has random weights (speed does not depend on their values); LoRA uses the trainer's
defaults (finetune.config.LoraSection: rank 16, default target modules).

Each mode runs in a fresh subprocess so that its peak memory is its own: peak RSS on the CPU,
torch.cuda.max_memory_allocated on CUDA. Prints one JSON object: per mode frames/s, seconds per
step, matmul FLOPs per step (torch's FlopCounterMode) and their rate as a fraction of the dense
matmul peak measured in the same run (MFU), and peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, matmul_peak_flops  # noqa: E402

from dia2.data.grid import FRAME_RATE  # noqa: E402
from dia2.data.teacher import Batch  # noqa: E402
from dia2.model.config import Dia2Config, load_config  # noqa: E402
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
    baseline_rss = _rss_mb()
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
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step() -> None:
        with autocast:
            loss = training_loss(trainable(batch.tokens), batch, LossSection(), cfg.data.action_pad_token_id).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state allocated, kernels chosen
    with FlopCounterMode(display=False) as counter:
        step()
    _sync(device)
    # The machine may be shared: the matmul peak is measured between the timed steps, under the
    # same load, and both are best-of-repeats.
    peak, seconds = 0.0, math.inf
    for _ in range(args.repeats):
        peak = max(peak, matmul_peak_flops(args.peak_dtype, n=8192 if device.startswith("cuda") else 2048, repeats=5, device=device))
        started = time.perf_counter()
        step()
        _sync(device)
        seconds = min(seconds, time.perf_counter() - started)
    frames = args.batch * columns
    flops = counter.get_total_flops()
    result = {
        "mode": mode,
        "trainable_parameters": sum(p.numel() for p in params),
        "seconds_per_step": seconds,
        "frames_per_s": frames / seconds,
        "flops_per_step": flops,
        "flops_per_s": flops / seconds,
        "matmul_peak_flops_per_s": peak,
        "mfu": flops / seconds / peak,
        "peak_rss_mb": _rss_mb(),
        "rss_before_model_mb": baseline_rss,
    }
    if device.startswith("cuda"):
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def _rss_mb() -> float:
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
