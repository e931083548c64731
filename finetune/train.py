"""Adapt Dia2 to a voice with LoRA (or QLoRA, or full fine-tuning).

    python finetune/train.py --config configs/train/tiny-cpu.yaml data.corpus=corpora/me
    python finetune/train.py --config configs/train/dia2-1b-lora.yaml --model ./my-dia2 data.corpus=corpora/me
    python finetune/train.py --config configs/train/dia2-2b-lora.yaml \\
        data.corpus=corpora/me output.name=me --export-merged --push-to-hub me/my-voice-lora
    python finetune/train.py --config ... --resume          # continue runs/<name> from its newest checkpoint
    python finetune/train.py --config ... --check           # check only: the files the run will write, as JSON

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
import re
import shlex
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LambdaLR
from tqdm.contrib.logging import logging_redirect_tqdm

from dia2.console import CHECK_FLAG, CHECK_HELP, check_only
from dia2.data.corpus import CorpusMeta
from dia2.data.teacher import Batch
from dia2.errors import Dia2Error
from dia2.launch.command import run_main
from dia2.launch.flags import FLAG_ALIASES, MODEL_FLAG
from dia2.output_paths import check_writable
from dia2.progress import Phase, ProgressFile, progress_bar
from finetune.card import model_card
from finetune.checkpoint import (
    Progress,
    check_resumable,
    checkpoint_name,
    complete_checkpoints,
    config_changes,
    load_checkpoint,
    read_state,
    resume_checkpoint,
    save_checkpoint,
    trainable_state,
)
from finetune.config import EvalSection, LossSection, OptimSection, OutputSection, TrainConfig, TrainConfigError
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
from finetune.schedule import Decay, continued_decay, lr_factor
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
    resume_from, saved = check_start(cfg, paths)
    decay = Decay.fresh(cfg.optim) if resume_from is None else resumed_decay(resume_from, saved, cfg.optim, is_main)

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
        elif saved is not None:
            record_resume(paths, saved, cfg, read_state(resume_from)["step"])
        save_config(run_config(cfg), paths.config)
    model = make_trainable(tts.model, cfg.lora, base.name, text_token_ids(corpus.train.examples, tts.ids))
    tts.model.set_gradient_checkpointing(cfg.optim.gradient_checkpointing)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    # Not passed to prepare(): Accelerate would step it once per process per step.
    scheduler = LambdaLR(optimizer, partial(lr_factor, optim=o, decay=decay))
    model, optimizer = accelerator.prepare(model, optimizer)
    # FSDP replaces every parameter with its shard: clip what the optimizer now holds.
    params = [p for p in model.parameters() if p.requires_grad]
    unwrapped = accelerator.unwrap_model(model)
    stream = BatchStream(
        corpus.train.lengths, cfg.data.max_frames_per_batch, cfg.data.bucket_size, cfg.seed,
        rank, accelerator.num_processes,
    )
    log = MetricsLog(paths.metrics, is_main)
    phase = ProgressFile(paths.progress, "step", enabled=is_main)
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
        phase.write(Phase.EVALUATING, at, o.steps)
        # The bar stands still meanwhile (minutes on a large model): say why, then what it found.
        logger.info("step %d: evaluating: %s", at, evaluation_work(corpus, cfg.eval.scripts if is_main else ()))
        started = time.perf_counter()
        held = held_out_loss(unwrapped, corpus, tts, cfg, accelerator)
        if held is not None:
            log.write({"step": at, "split": "eval", **held})
            tracker.log(held, at, "eval")
            logger.info("step %d: held-out loss %.3f (action %.3f, codebook 0 %.3f, depformer %.3f)", at, held["loss"],
                        held["loss_action"], held["loss_cb0"], held["loss_depformer"])
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
        logger.info("step %d: evaluated in %.0f s", at, time.perf_counter() - started)

    def evaluation_due(at: int) -> bool:
        return at == o.steps or bool(cfg.eval.every and at % cfg.eval.every == 0)

    if step == 0 and cfg.eval.at_start:
        evaluate(0)
    elif step > 0 and evaluation_due(step) and not evaluated(paths, corpus, cfg.eval, step):
        evaluate(step)  # the evaluation a stop interrupted (its checkpoint is written first)
    started, first_step = time.perf_counter(), step
    with progress_bar(o.steps, "training", "step", initial=step, disable=not is_main) as progress:
        while step < o.steps:
            step += 1
            step_started = time.perf_counter()
            model.train()

            def micro_batches() -> Iterator[Batch]:
                for _ in range(o.grad_accumulation):
                    position, indices = next(stream)
                    drop = uncond_mask(cfg.seed, position, 0, len(indices), cfg.data.uncond_prob)
                    yield make_batch(corpus.train.examples, indices, data, tts.ids, drop).to(device)

            with out_of_memory_hint(cfg):
                sums, frames = accumulate_gradients(
                    model, micro_batches(), o.grad_accumulation, cfg.loss, data.action_pad_token_id, accelerator,
                    check_loss=lambda loss: stop_if_not_finite(loss, "the loss", step, paths, accelerator),
                )
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
            seconds_per_step = (time.perf_counter() - started) / (step - first_step)
            phase.write(Phase.TRAINING, step, o.steps, seconds_per_step * (o.steps - step))
            # The checkpoint first: a run stopped during the evaluation keeps this step.
            if step == o.steps or (cfg.output.save_every and step % cfg.output.save_every == 0):
                at = Progress(step, stream.position, seconds_before + time.perf_counter() - started, dataclasses.asdict(decay))
                phase.write(Phase.SAVING, step, o.steps)
                save_checkpoint(paths.checkpoints, at, model, optimizer, scheduler, accelerator, cfg.output.keep_last)
            if evaluation_due(step):
                evaluate(step)
    phase.write(Phase.SAVING, step, o.steps)
    finish(cfg, paths, base, corpus, model, step, accelerator, seconds_before + time.perf_counter() - started)
    phase.write(Phase.DONE, step, o.steps)
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


def check_start(cfg: TrainConfig, paths: RunPaths) -> tuple[Path | None, dict[str, Any] | None]:
    """Every refusal before anything loads: the inputs, and a resume (the checkpoint to resume
    from and the run's saved config.yaml, checked against `cfg`; None, None for a fresh run)."""
    resume_from = resume_checkpoint(cfg.output.resume, paths.root)
    saved = yaml.safe_load(paths.config.read_text()) if resume_from is not None and paths.config.is_file() else None
    if saved is not None:
        check_resumable(saved, config_to_dict(cfg))
    check_inputs(cfg)
    return resume_from, saved


def check_run(cfg: TrainConfig) -> dict[str, Any]:
    """The check-only run (--check): the refusals `train` makes before it loads the base
    (`check_start`), nothing written. Returns the files the run will write, by role, and its
    optim.steps."""
    paths = RunPaths(Path(cfg.output.dir) / cfg.output.name)
    check_start(cfg, paths)
    writes = {"run": paths.root, "config": paths.config, "progress": paths.progress, "metrics": paths.metrics,
              "checkpoints": paths.checkpoints}
    if cfg.lora.full_finetune:
        writes["model"] = paths.model
    else:
        writes["adapter"] = paths.adapter
    return {"writes": {role: str(path.absolute()) for role, path in writes.items()}, "steps": cfg.optim.steps}


def check_inputs(cfg: TrainConfig) -> None:
    """Refuse what can be refused before anything loads (loading the 2B base takes minutes)."""
    check_writable(Path(cfg.output.dir) / cfg.output.name, "the run folder (output.dir/output.name)", folder=True)
    corpus = Path(cfg.data.corpus)
    if not corpus.exists():
        raise TrainConfigError(
            f"data.corpus={cfg.data.corpus} does not exist: pass the folder dia2-prep wrote "
            f"(dia2-prep RECORDINGS {cfg.data.corpus})"
        )
    CorpusMeta.load(corpus)  # a folder that is not a corpus
    resolve_source(cfg.model.base)  # a base that is neither a folder, a Hub repo id nor tiny


def evaluation_work(corpus: TrainingData, scripts: Sequence[str]) -> str:
    """What an evaluation does, for the line that announces it."""
    work = [f"held-out loss on {len(corpus.validation.examples)} utterances"] if corpus.validation.examples else []
    if scripts:
        work.append(f"{len(scripts)} sample script{'s' if len(scripts) > 1 else ''}")
    return ", ".join(work) or "nothing to evaluate (no validation split, no sample scripts)"


def resumed_decay(folder: Path, saved: dict[str, Any] | None, optim: OptimSection, is_main: bool) -> Decay:
    """The learning-rate decay a run resumed from checkpoint `folder` continues with (extended
    when optim.steps changed, with a warning: finetune.schedule); `saved`: the run's config.yaml."""
    state = read_state(folder)
    steps_before = saved["optim"]["steps"] if saved else optim.steps
    recorded = Decay.from_record(state.get("lr_decay"), optim, steps_before)
    decay = continued_decay(recorded, state["step"], optim)
    if decay != recorded and is_main:
        change = "raised" if optim.steps > recorded.steps else "lowered"
        logger.warning(
            "optim.steps %s from %d to %d on resume: the learning-rate schedule continues from step %d at %.3g "
            "(where the run left it) to %.3g (optim.lr x optim.min_lr_ratio) at step %d; the steps already trained "
            "keep their rates (the change is recorded in %s)", change, recorded.steps, optim.steps, state["step"],
            optim.lr * lr_factor(state["step"], optim, decay), optim.lr * optim.min_lr_ratio, optim.steps,
            RunPaths.RESUMES,
        )
    return decay


def record_resume(paths: RunPaths, saved: dict[str, Any], cfg: TrainConfig, step: int) -> None:
    """Append to resumes.jsonl what a resume at `step` changed in the run's config (config.yaml
    then holds the new values): the record of what ran. Where the run lives and what this
    invocation does (output.dir, output.name, --resume, --export-merged, push) are not changes."""
    ignored = {"output.dir", "output.name", *(f"output.{k}" for k in INVOCATION_KEYS)}
    changed = {k: [old, new] for k, (old, new) in config_changes(saved, config_to_dict(cfg)).items() if k not in ignored}
    if changed:
        with paths.resumes.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "changed": changed}) + "\n")


def evaluated(paths: RunPaths, corpus: TrainingData, section: EvalSection, step: int) -> bool:
    """Whether the evaluation of `step` left its record (held-out loss, or samples); True when an
    evaluation records nothing (no validation split, no sample scripts)."""
    if not corpus.validation.examples and not section.scripts:
        return True
    records = read_metrics(paths.metrics) if paths.metrics.is_file() else []
    return any(r["step"] == step and r["split"] == "eval" for r in records) or (paths.samples / checkpoint_name(step)).is_dir()


def mixed_precision(optim: OptimSection) -> str:
    if optim.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return optim.mixed_precision


def accumulate_gradients(
    model: torch.nn.Module, batches: Iterable[Batch], steps: int, weights: LossSection, action_pad_id: int,
    accelerator: Accelerator, check_loss: Callable[[torch.Tensor], None] = lambda loss: None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add to the gradients of `model` those of the next `steps` micro-batches of `batches`, each
    loss divided by `steps`: the gradient is the mean of the micro-batches' losses' gradients (and
    under DDP, of every process's). When the micro-batches weigh their targets alike (equal target
    counts per stream), that is the gradient of one batch `steps` times as large.
    `check_loss` sees each loss before its backward. Returns the loss statistics summed over the
    micro-batches [3, 4] and their real frames."""
    sums = torch.zeros(3, 4, device=accelerator.device)
    frames = torch.zeros((), device=accelerator.device)
    for micro, batch in zip(range(steps), batches):
        # DDP all-reduces gradients during backward: only on the step's last batch.
        sync = accelerator.no_sync(model) if micro < steps - 1 else contextlib.nullcontext()
        with sync:
            result = training_loss(model(batch.tokens), batch, weights, action_pad_id)
            check_loss(result.loss)
            accelerator.backward(result.loss / steps)
        sums += result.stats
        frames += batch.frames
    return sums, frames


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
        run = run_record(cfg, paths, base, corpus, unwrapped, step, accelerator.num_processes, in_sync, seconds)
        if cfg.lora.full_finetune:
            save_full_model(unwrapped.config, weights, base.source, paths.model, run)
        else:
            save_adapter(unwrapped, paths.adapter, run, weights)
            (paths.adapter / CARD_FILE).write_text(model_card(run, cfg.output.push_to_hub), encoding="utf-8")
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


def run_record(
    cfg: TrainConfig, paths: RunPaths, base: Base, corpus: TrainingData, model: torch.nn.Module, step: int,
    processes: int, in_sync: bool | None, seconds: float,
) -> dict[str, Any]:
    """The run's record, which the trained voice carries (its voice.json's "run"): speakers,
    corpus, training summary, samples, license, consent."""
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
            "resumes": read_metrics(paths.resumes) if paths.resumes.is_file() else [],
        },
        "samples": samples,
        "license": cfg.output.license,
        "consent": cfg.output.consent,
    }


def parse_args(argv: list[str] | None) -> TrainConfig:
    """The checked config a command line gives."""
    return config_from_flags(parse_flags(argv))


def parse_flags(argv: list[str] | None) -> argparse.Namespace:
    """The command line parsed (argparse exits with its message on a bad flag)."""
    parser = argparse.ArgumentParser(
        prog="finetune/train.py", description=__doc__, epilog="config keys:\n\n" + help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML preset, e.g. configs/train/dia2-2b-lora.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-4")
    parser.add_argument(MODEL_FLAG, *FLAG_ALIASES[MODEL_FLAG], dest="model", metavar="MODEL",
                        help="same as model.base=MODEL: the base model to adapt (Hub repo id, local folder, or tiny)")
    parser.add_argument("--resume", nargs="?", const="auto", help="same as output.resume (bare: auto, the newest checkpoint)")
    parser.add_argument("--export-merged", action="store_true", help="same as output.export_merged=true")
    parser.add_argument("--push-to-hub", metavar="REPO", help="same as output.push_to_hub=REPO")
    parser.add_argument("--hub-dry-run", action="store_true", help="same as output.hub_dry_run=true")
    parser.add_argument(CHECK_FLAG, action="store_true", help=CHECK_HELP)
    # Intermixed: key=value overrides may come before or after the flags. A key=value right after a
    # bare --resume is an override, not the checkpoint to resume from.
    argv = [*argv] if argv is not None else sys.argv[1:]
    for i, arg in enumerate(argv[:-1]):
        if arg == "--resume" and re.fullmatch(r"[\w.]+=.*", argv[i + 1]):
            argv[i] = "--resume=auto"
    return parser.parse_intermixed_args(argv)


def config_from_flags(args: argparse.Namespace) -> TrainConfig:
    """The checked config the parsed command line gives (the flags are output.* overrides)."""
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.base={args.model}")
    if args.resume:
        overrides.append(f"output.resume={args.resume}")
    if args.export_merged:
        overrides.append("output.export_merged=true")
    if args.push_to_hub:
        overrides.append(f"output.push_to_hub={args.push_to_hub}")
    if args.hub_dry_run:
        overrides.append("output.hub_dry_run=true")
    return load_config(args.config, overrides)


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
    command = shlex.join([*launcher.split(), script_path(), *args, "--resume"])
    return f"the last checkpoint is {done[-1]}; continue with{same_flags}: {command}"


def script_path() -> str:
    """This script as the user's shell reaches it from where they are: relative to the current
    folder when it lies below it (finetune/train.py from the checkout), else absolute."""
    path = Path(__file__).resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_flags(argv)
    if args.check:
        return check_only("train", lambda: check_run(config_from_flags(args)))

    def run(cfg: TrainConfig) -> int:
        with logging_redirect_tqdm():  # log lines print above the progress bar on a terminal, not into it
            train(cfg)
        return 0

    def stopped(cfg: TrainConfig | None) -> str:
        return resume_hint(cfg, argv) if cfg is not None else "nothing was trained"

    # Config errors are reported in one line (exit 1), as every error of a run is.
    return run_main("train", lambda: config_from_flags(args), run, log_level=logging.WARNING,
                    loggers={"finetune": logging.INFO}, stopped=stopped)


if __name__ == "__main__":
    sys.exit(main())
