"""Model-core throughput on CPU: training forward+backward vs frame-by-frame decoding.

    python bench/model_core.py [--config configs/models/dia2-100m.json] [--frames 256] [--batch 4]

Prints one JSON object:
- train: frames/s of forward + masked cross-entropy + backward over B x T frames (float32), the
  matmul FLOPs of that step as counted by torch's FlopCounterMode, and the achieved FLOP/s as a
  fraction of this machine's float32 matmul peak measured in the same run;
- forward: the same forward without gradients (frames/s);
- step: the same T frames through `step` + every `depformer_step`, one frame at a time (batch 1,
  no grad), and the ratio forward-frames/s over step-frames/s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import best_time, describe, matmul_peak_flops  # noqa: E402

from dia2.model.config import Dia2Config, load_config  # noqa: E402
from dia2.model.network import Dia2Model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def random_grid(cfg: Dia2Config, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = cfg.data
    tokens = torch.empty(batch, d.channels, frames, dtype=torch.long)
    tokens[:, :2] = torch.randint(0, d.text_vocab_size, (batch, 2, frames), generator=g)
    tokens[:, 2:] = torch.randint(0, d.audio_vocab_size - 2, (batch, d.num_codebooks, frames), generator=g)
    return tokens


def train_loss(model: Dia2Model, tokens: torch.Tensor) -> torch.Tensor:
    """The training signal's shape of work: CE on action, cb0 and every depformer stage."""
    out = model(tokens)
    nxt = tokens[:, :, 1:]
    action_target = (nxt[:, 0] == model.config.data.text_new_word_token_id).long()
    loss = F.cross_entropy(out.action_logits[:, :-1].flatten(0, 1), action_target.flatten())
    loss = loss + F.cross_entropy(out.cb0_logits[:, :-1].flatten(0, 1), nxt[:, 2].flatten())
    dep_target = nxt[:, 3:].transpose(1, 2)  # [B, T-1, K-1]
    return loss + F.cross_entropy(out.depformer_logits.flatten(0, 2), dep_target.flatten())


def bench_train(model: Dia2Model, tokens: torch.Tensor, repeats: int) -> dict:
    model.train()

    def run() -> None:
        model.zero_grad(set_to_none=True)
        train_loss(model, tokens).backward()

    with FlopCounterMode(display=False) as counter:
        run()
    flops = counter.get_total_flops()
    seconds = best_time(run, repeats)
    frames = tokens.shape[0] * tokens.shape[2]
    return {"seconds_per_step": seconds, "frames_per_s": frames / seconds, "flops_per_step": flops, "flops_per_s": flops / seconds}


def bench_forward(model: Dia2Model, tokens: torch.Tensor, repeats: int) -> dict:
    model.eval()
    with torch.no_grad():
        seconds = best_time(lambda: model(tokens), repeats)
    return {"frames_per_s": tokens.shape[0] * tokens.shape[2] / seconds}


def bench_step(model: Dia2Model, tokens: torch.Tensor) -> dict:
    model.eval()
    tokens = tokens[:1]
    T = tokens.shape[-1]
    K = model.config.num_codebooks

    def run() -> None:
        state = model.new_state(1, T)
        for t in range(T):
            out = model.step(tokens[:, :, t : t + 1], state)
            if t + 1 < T:
                for s in range(K - 1):
                    model.depformer_step(s, out.hidden[:, 0], tokens[:, 2 + s, t + 1], state)

    with torch.no_grad():
        seconds = best_time(run, 1)
    return {"frames_per_s": T / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/models/dia2-100m.json")
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = Dia2Model.from_config(cfg, dtype=torch.float32)
    tokens = random_grid(cfg, args.batch, args.frames)
    peak = matmul_peak_flops(torch.float32)
    train = bench_train(model, tokens, args.repeats)
    forward = bench_forward(model, tokens, args.repeats)
    step = bench_step(model, tokens)
    result = {
        "benchmark": "model_core",
        "machine": describe(),
        "config": str(args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": args.batch,
        "frames": args.frames,
        "matmul_peak_flops_per_s": peak,
        "train": {**train, "fraction_of_peak": train["flops_per_s"] / peak},
        "forward": forward,
        "step": {**step, "forward_over_step": forward["frames_per_s"] / step["frames_per_s"]},
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
