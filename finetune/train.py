"""Adapt Dia2 to a voice with LoRA (or QLoRA, or full fine-tuning).

    python finetune/train.py --config configs/train/tiny-cpu.yaml data.corpus=corpora/me
    python finetune/train.py --config configs/train/dia2-2b-lora.yaml \\
        data.corpus=corpora/me output.name=me --export-merged --push-to-hub me/my-voice-lora
    python finetune/train.py --config ... --resume          # continue runs/<name> from its newest checkpoint

Several processes (DDP; over gloo on CPU): accelerate launch --quiet --multi_gpu --num_processes 2
--num_machines 1 --mixed_precision no --dynamo_backend no finetune/train.py ... (these flags keep
accelerate quiet: no defaults warning, no second traceback after an error). Sharded (FSDP2), on
several GPUs or nodes: accelerate launch --config_file configs/accelerate/fsdp-full.yaml
finetune/train.py ... (configs/accelerate/ holds one config per set-up, each with its launch
line). A checkpoint resumes on any number of processes. Ctrl-C or SIGTERM stops a run with one
line: the last checkpoint and the command that continues it.

The loop below reads top to bottom: load the base, the corpus and the adapter; then per step,
grad_accumulation teacher-forced batches (finetune.data) through the weighted masked loss
(finetune.losses), one optimizer step, one line of metrics.jsonl; evaluation and checkpoints at
their intervals; finally the adapter folder, the loss curve, and optional merged export and Hub
push (finetune.outputs, finetune.push). Config keys are listed below; every one is documented in
finetune/config.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script, Python puts finetune/ first on sys.path, where our module names (data,
    # config) would shadow top-level packages; the repo root is what belongs there.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import shlex
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm import tqdm

from dia2.data.corpus import CorpusMeta
from dia2.errors import Dia2Error, report
from finetune.card import model_card
from finetune.checkpoint import (
    Progress,
    check_resumable,
    checkpoint_name,
    complete_checkpoints,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
    trainable_state,
)
from finetune.config import ConfigError, OptimSection, OutputSection, TrainConfig
from finetune.config_file import config_to_dict, help_text, load_config, save_config
from finetune.data import (
    BatchStream,
    TrainingData,
    load_training_data,
    make_batch,
    text_token_ids,
    uncond_mask,
)
from finetune.evaluation import (
    check_evaluation,
    held_out_loss,
    keep_best,
    speak_and_score,
)
from finetune.losses import metrics, training_loss
from finetune.modeling import (
    Base,
    check_sharding,
    is_sharded,
    load_base,
    make_trainable,
    parameter_counts,
    resolve_source,
    select_fsdp_on_cpu,
)
from finetune.outputs import (
    MetricsLog,
    RunPaths,
    export_merged,
    loss_curve,
    read_metrics,
    save_adapter,
    save_full_model,
)
from finetune.push import CARD_FILE, push_run
from finetune.tracking import Tracker, accelerate_kwargs

logger = logging.getLogger("finetune.train")


class TrainingError(Dia2Error, RuntimeError):
    """A run that had to stop (non-finite loss, out of memory); the message says what to do."""


def train(cfg: TrainConfig) -> RunPaths:
    """Run the training `cfg` describes, from scratch or from a checkpoint; returns the run's paths."""
    paths = RunPaths(Path(cfg.output.dir) / cfg.output.name)
    # Without CUDA, Accelerate only joins the processes of a multi-process launch (DDP over gloo)
    # when told it runs on the CPU; otherwise each process would train alone.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=multi_cpu, mixed_precision=mixed_precision(cfg.optim), **accelerate_kwargs(cfg.output.tracker, paths.root)
    )
    select_fsdp_on_cpu(accelerator)
    check_sharding(accelerator, cfg.quant, cfg.eval.scripts)
    rank, device, is_main = accelerator.process_index, accelerator.device, accelerator.is_main_process
    resume_from = resume_checkpoint(cfg.output.resume, paths.root)
    if resume_from is not None and paths.config.is_file():
        check_resumable(yaml.safe_load(paths.config.read_text()), config_to_dict(cfg))
    check_inputs(cfg)

    # Model, data, optimizer. The same seed on every process gives every process the same LoRA init.
    set_seed(cfg.seed)
    base = load_base(cfg.model, cfg.quant, cfg.lora.full_finetune, device)
    tts, data = base.tts, base.tts.model.config.data
    corpus = load_training_data(
        cfg.data.corpus, tts.tokenizer, tts.ids, data, tts.codec.fingerprint,
        cfg.data.max_frames_per_batch, cfg.data.min_asr_confidence,
    )
    # Refused here, not at the first evaluation after the run folder exists (or on one process only).
    check_evaluation(cfg.eval, corpus, tts, accelerator)
    # The run folder changes only once every input has loaded: a failed start leaves nothing behind.
    accelerator.wait_for_everyone()  # every process has looked at the folder before it changes
    if is_main:
        paths.root.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            paths.metrics.unlink(missing_ok=True)  # left by a fresh run that died before its first checkpoint
        save_config(run_config(cfg), paths.config)
    model = make_trainable(tts.model, cfg.lora, base.name, text_token_ids(corpus.train.examples, tts.ids))
    tts.model.set_gradient_checkpointing(cfg.optim.gradient_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    # Not passed to prepare(): Accelerate would step it once per process per step.
    scheduler = LambdaLR(optimizer, partial(lr_factor, optim=o))
    model, optimizer = accelerator.prepare(model, optimizer)
    # FSDP replaces every parameter with its shard: clip what the optimizer now holds.
    params = [p for p in model.parameters() if p.requires_grad]
    unwrapped = accelerator.unwrap_model(model)
    stream = BatchStream(
        corpus.train.lengths, cfg.data.max_frames_per_batch, cfg.data.bucket_size, cfg.seed,
        rank, accelerator.num_processes,
    )
    log = MetricsLog(paths.metrics, is_main)
    step, seconds_before = 0, 0.0
    if resume_from is not None:
        resumed = load_checkpoint(resume_from, model, optimizer, scheduler, accelerator, cfg.seed)
        step, stream.position, seconds_before = resumed.step, resumed.position, resumed.seconds
        log.truncate(step)
    else:
        set_seed(cfg.seed, device_specific=True)  # from here on, each process draws its own LoRA dropout
    tracker = Tracker(accelerator, cfg.output.tracker, cfg.output.project, paths.root, cfg.output.name, config_to_dict(cfg))
    counts = parameter_counts(unwrapped)
    logger.info("training %d of %d parameters on %d process(es)", counts["trainable"], counts["total"], accelerator.num_processes)

    def evaluate(at: int) -> None:
        held = held_out_loss(unwrapped, corpus, tts, cfg, accelerator)
        if held is not None:
            log.write({"step": at, "split": "eval", **held})
            tracker.log(held, at, "eval")
        scores = dict(held or {})
        if is_main and cfg.eval.scripts:
            folder = paths.samples / checkpoint_name(at)
            samples, sample_scores = speak_and_score(tts, cfg.eval, folder)
            tracker.log_audio(samples, at)
            tracker.log(sample_scores, at, "eval_samples")
            scores.update(sample_scores)
        if cfg.eval.keep_best:
            # Sharded (FSDP) LoRA weights are gathered whole first: a collective every process joins.
            weights = trainable_state(model) if is_sharded(accelerator) else None
            if is_main:
                keep_best(unwrapped, paths.root / "best", at, cfg.eval.metric, scores, weights)
        accelerator.wait_for_everyone()

    if step == 0 and cfg.eval.at_start:
        evaluate(0)
    started = time.perf_counter()
    progress = tqdm(total=o.steps, initial=step, desc="training", unit="step", disable=not is_main)
    while step < o.steps:
        step += 1
        step_started = time.perf_counter()
        model.train()
        sums = torch.zeros(3, 4, device=device)
        frames = torch.zeros((), device=device)
        for micro in range(o.grad_accumulation):
            position, indices = next(stream)
            drop = uncond_mask(cfg.seed, position, 0, len(indices), cfg.data.uncond_prob)
            batch = make_batch(corpus.train.examples, indices, data, tts.ids, drop).to(device)
            # DDP all-reduces gradients during backward: only on the step's last batch.
            sync = accelerator.no_sync(model) if micro < o.grad_accumulation - 1 else contextlib.nullcontext()
            with sync, out_of_memory_hint(cfg):
                result = training_loss(model(batch.tokens), batch, cfg.loss, data.action_pad_token_id)
                stop_if_not_finite(result.loss, "the loss", step, paths, accelerator)
                accelerator.backward(result.loss / o.grad_accumulation)
            sums += result.stats
            frames += batch.frames
        grad_norm = accelerator.clip_grad_norm_(params, o.grad_clip or math.inf)
        if isinstance(grad_norm, DTensor):  # FSDP: the norm over every shard, the same on every process
            grad_norm = grad_norm.full_tensor()
        stop_if_not_finite(grad_norm, "the gradient norm", step, paths, accelerator)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        sums, frames = accelerator.reduce(sums, "sum"), accelerator.reduce(frames, "sum")
        record = {
            "step": step, "split": "train", **metrics(sums, cfg.loss), "lr": lr, "grad_norm": float(grad_norm),
            "frames": int(frames), "frames_per_s": float(frames) / (time.perf_counter() - step_started),
        }
        log.write(record)
        tracker.log(record, step, "train")
        progress.update()
        progress.set_postfix(loss=f"{record['loss']:.3f}")
        last = step == o.steps
        if last or (cfg.eval.every and step % cfg.eval.every == 0):
            evaluate(step)
        if last or (cfg.output.save_every and step % cfg.output.save_every == 0):
            at = Progress(step, stream.position, seconds_before + time.perf_counter() - started)
            save_checkpoint(paths.checkpoints, at, model, optimizer, scheduler, accelerator, cfg.output.keep_last)
    progress.close()
    finish(cfg, paths, base, corpus, model, step, accelerator, seconds_before + time.perf_counter() - started)
    tracker.close()
    return paths


INVOCATION_KEYS = ("resume", "export_merged", "push_to_hub", "hub_dry_run")
"""output.* keys that say what one invocation does (continue, export, publish), not what the run
is: config.yaml records them at their defaults, so a resume or an export does not rewrite the run."""


def run_config(cfg: TrainConfig) -> TrainConfig:
    """The config that config.yaml records: `cfg` with the invocation keys at their defaults."""
    defaults = OutputSection()
    return dataclasses.replace(
        cfg, output=dataclasses.replace(cfg.output, **{k: getattr(defaults, k) for k in INVOCATION_KEYS})
    )


def check_inputs(cfg: TrainConfig) -> None:
    """Refuse what can be refused before anything loads (loading the 2B base takes minutes)."""
    corpus = Path(cfg.data.corpus)
    if not corpus.exists():
        raise ConfigError(
            f"data.corpus={cfg.data.corpus} does not exist: pass the folder dia2-prep wrote "
            f"(dia2-prep RECORDINGS {cfg.data.corpus})"
        )
    CorpusMeta.load(corpus)  # a folder that is not a corpus
    resolve_source(cfg.model.base)  # a base that is neither a folder, a Hub repo id nor tiny


def mixed_precision(optim: OptimSection) -> str:
    if optim.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return optim.mixed_precision


def lr_factor(step: int, optim: OptimSection) -> float:
    """Multiplier of optim.lr for optimizer step step+1: linear warm-up, then the decay schedule
    down to min_lr_ratio at the last step."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step + 1 - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps))
    low = optim.min_lr_ratio
    if optim.schedule == "linear":
        return 1.0 - (1.0 - low) * progress
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def stop_if_not_finite(value: torch.Tensor, what: str, step: int, paths: RunPaths, accelerator: Accelerator) -> None:
    """Stop every process together when `value` is nan or inf, before it reaches the weights or a
    checkpoint; the last checkpoint written stays the newest one."""
    bad = accelerator.reduce((~torch.isfinite(value.detach())).float().reshape(1), "sum")
    if bad.item() > 0:
        good = complete_checkpoints(paths.checkpoints)
        where = f"the last good checkpoint is {good[-1]}" if good else "no checkpoint was written yet"
        raise TrainingError(
            f"{what} is not finite at step {step}: stopped without saving; {where}. Lower optim.lr (or raise "
            "optim.warmup_steps), check the corpus, then continue with output.resume=auto"
        )


@contextlib.contextmanager
def out_of_memory_hint(cfg: TrainConfig) -> Iterator[None]:
    """Turn an out-of-memory error into one that names the knobs that fix it."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if not (isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text):
            raise
        checkpointing = cfg.optim.gradient_checkpointing
        fixes = "lower data.max_frames_per_batch (and raise optim.grad_accumulation to keep the batch)"
        if not checkpointing:
            fixes += ", or set optim.gradient_checkpointing=true"
        raise TrainingError(
            f"out of memory with batches of data.max_frames_per_batch={cfg.data.max_frames_per_batch} grid columns and "
            f"gradient checkpointing {'on' if checkpointing else 'off'} (optim.gradient_checkpointing): {fixes}"
        ) from exc


def finish(
    cfg: TrainConfig, paths: RunPaths, base: Base, corpus: TrainingData, model: torch.nn.Module, step: int,
    accelerator: Accelerator, seconds: float,
) -> None:
    """Write the trained voice (adapter/ or model/), the loss curve, then export and push if asked.
    `model` is the prepared (DDP or FSDP) model; every process calls this."""
    unwrapped = accelerator.unwrap_model(model)
    # Sharded weights are held once, so there are no replicas to compare.
    in_sync = None if is_sharded(accelerator) else replicas_in_sync(unwrapped, accelerator)
    weights = trainable_state(model, every_weight=cfg.lora.full_finetune)  # whole, on the main process
    if accelerator.is_main_process:
        voice = voice_summary(cfg, paths, base, corpus, unwrapped, step, accelerator.num_processes, in_sync, seconds)
        if cfg.lora.full_finetune:
            save_full_model(unwrapped.config, weights, base.source, paths.model, voice)
        else:
            save_adapter(unwrapped, paths.adapter, voice, weights)
            (paths.adapter / CARD_FILE).write_text(model_card(voice, cfg.output.push_to_hub), encoding="utf-8")
        loss_curve(paths.metrics, paths.loss_png)
        if cfg.output.export_merged and not cfg.lora.full_finetune:  # full fine-tuning wrote model/ already
            export_merged(base.source, paths.adapter, paths.merged)
        if cfg.output.push_to_hub:
            plan = push_run(paths.root, cfg.output.push_to_hub, cfg.output.hub_private, cfg.output.hub_dry_run)
            verb = "would upload" if cfg.output.hub_dry_run else "uploaded"
            print(json.dumps({"repo": cfg.output.push_to_hub, verb: [u.path_in_repo for u in plan]}, indent=1))
        logger.info("finished %d steps in %.0f s: %s", step, seconds, paths.weights)
    accelerator.wait_for_everyone()


def replicas_in_sync(model: torch.nn.Module, accelerator: Accelerator) -> bool:
    """Whether every process holds the same trainable weights (per-tensor sums and sums of
    squares, compared exactly): the end-of-run check that DDP kept the replicas together."""
    trainable = [p.detach().double() for p in model.parameters() if p.requires_grad]
    sums = torch.stack([torch.stack([p.sum(), p.square().sum()]) for p in trainable]).flatten()
    gathered = accelerator.gather(sums.to(accelerator.device)[None])
    return bool((gathered == gathered[0]).all())


def voice_summary(
    cfg: TrainConfig, paths: RunPaths, base: Base, corpus: TrainingData, model: torch.nn.Module, step: int,
    processes: int, in_sync: bool | None, seconds: float,
) -> dict[str, Any]:
    """The content of dia2_voice.json: speakers, corpus, training summary, samples, license, consent."""
    records = read_metrics(paths.metrics)
    evals = [r for r in records if r["split"] == "eval"]
    trains = [r for r in records if r["split"] == "train"]
    sample_dir = paths.samples / checkpoint_name(step)
    samples = [
        {"file": str((sample_dir / f"sample_{i}.wav").relative_to(paths.root)), "script": script}
        for i, script in enumerate(cfg.eval.scripts)
        if (sample_dir / f"sample_{i}.wav").is_file()
    ]
    lora = cfg.lora
    return {
        "base_model": base.name,
        "language": corpus.meta.extra.get("language"),  # dia2-prep --language; None: not given
        "speakers": corpus.speakers,
        "corpus": {**corpus.summary(), "meta": dataclasses.asdict(corpus.meta)},
        "training": {
            "steps": step,
            "processes": processes,
            "replicas_in_sync": in_sync,  # None when FSDP sharded the weights
            "sharded": in_sync is None,
            "seconds": round(seconds, 1),
            "full_finetune": lora.full_finetune,
            "quantization": cfg.quant.mode,
            "lora": {"rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout,
                     "target_modules": lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules),
                     "train_embeddings": lora.train_embeddings, "modules_to_save": list(lora.modules_to_save)},
            "parameters": parameter_counts(model),
            "final_train": trains[-1] if trains else None,
            "eval_start": evals[0] if evals and evals[0]["step"] == 0 else None,
            "eval_final": evals[-1] if evals else None,
        },
        "samples": samples,
        "license": cfg.output.license,
        "consent": cfg.output.consent,
    }


def parse_args(argv: list[str] | None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        prog="finetune/train.py", description=__doc__, epilog="config keys:\n\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML preset, e.g. configs/train/dia2-2b-lora.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")
    parser.add_argument("--resume", nargs="?", const="auto", help="same as output.resume (bare: auto, the newest checkpoint)")
    parser.add_argument("--export-merged", action="store_true", help="same as output.export_merged=true")
    parser.add_argument("--push-to-hub", metavar="REPO", help="same as output.push_to_hub=REPO")
    parser.add_argument("--hub-dry-run", action="store_true", help="same as output.hub_dry_run=true")
    # Intermixed: key=value overrides may come before or after the flags.
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"output.resume={args.resume}")
    if args.export_merged:
        overrides.append("output.export_merged=true")
    if args.push_to_hub:
        overrides.append(f"output.push_to_hub={args.push_to_hub}")
    if args.hub_dry_run:
        overrides.append("output.hub_dry_run=true")
    return load_config(args.config, overrides)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so both stop a run the same way."""


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c() -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise Terminated

    if threading.current_thread() is not threading.main_thread():
        yield  # Python delivers signals to the main thread only; its handler stays in charge
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resume_hint(cfg: TrainConfig, argv: list[str]) -> str:
    """Where an interrupted run stands, and the command that continues it."""
    paths = RunPaths(Path(cfg.output.dir) / cfg.output.name)
    done = complete_checkpoints(paths.checkpoints)
    if not done:
        return f"no checkpoint was written yet (output.save_every={cfg.output.save_every}): start again to train"
    args, skip = [], False
    for arg in argv:  # this invocation's arguments, less any resume it already asked for
        if skip and "=" not in arg and not arg.startswith("-"):
            skip = False
            continue
        skip = arg == "--resume"
        if not (skip or arg.startswith(("--resume=", "output.resume="))):
            args.append(arg)
    # accelerate launch sets this in its processes; its own flags are not visible from here.
    launcher = "accelerate launch" if "ACCELERATE_DYNAMO_BACKEND" in os.environ else sys.executable
    same_flags = " (with the same accelerate launch flags)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    command = shlex.join([*launcher.split(), "finetune/train.py", *args, "--resume"])
    return f"the last checkpoint is {done[-1]}; continue with{same_flags}: {command}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("finetune").setLevel(logging.INFO)
    argv = sys.argv[1:] if argv is None else argv
    cfg = None
    try:
        with sigterm_stops_like_ctrl_c():
            cfg = parse_args(argv)
            train(cfg)
    except Dia2Error as exc:
        return report("train", exc)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        if int(os.environ.get("RANK", "0")) == 0:  # one message for all processes
            hint = resume_hint(cfg, argv) if cfg is not None else "nothing was trained"
            print(f"\ntrain: stopped by {'SIGTERM' if terminated else 'Ctrl-C'}: {hint}", file=sys.stderr)
        return 128 + int(signal.SIGTERM if terminated else signal.SIGINT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
