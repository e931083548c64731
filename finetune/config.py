"""The trainer's configuration: one frozen dataclass per concern, every field documented once.

The string literal under each field is its documentation: `dia2.options` turns it into the
`--help` of finetune/train.py, and it is what a reader of a preset looks up. Loading YAML presets
and `key=value` overrides (strictly: unknown keys and mistyped values are errors) lives in
`finetune/config_file.py`; this module holds the schema and the value checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from dia2.model.adapter_files import DEFAULT_TARGET_MODULES
from dia2.model.assets import hub_repo_id_problem
from dia2.options import SENTENCES, OptionError, sections


class TrainConfigError(OptionError):
    """A training config that cannot be used; the message names the key and the fix."""


@dataclass(frozen=True)
class ModelSection:
    """The base model to adapt."""

    base: str = "tiny"
    """Hub repo id (nari-labs/Dia2-2B), local model folder, or `tiny` (the embedded demo model:
    random weights, for tests and dry runs); on the command line also `--model` (every command's
    spelling of the model source)."""
    base_name: str | None = None
    """Recorded as the adapter's base_model_name_or_path and on the model card; default: `base`
    (a local folder as its absolute path)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of the frozen base weights. auto: bfloat16 for LoRA on CUDA (half the memory of the
    weights that do not train), float32 otherwise. Full fine-tuning refuses bfloat16: the optimizer
    needs float32 weights (optim.mixed_precision=bf16 gives bf16 compute)."""


@dataclass(frozen=True)
class LoraSection:
    """The PEFT LoRA adapter (or full fine-tuning)."""

    rank: int = 16
    """LoRA rank r of every adapted layer."""
    alpha: float = 32.0
    """LoRA alpha: the update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the LoRA branch's input while training."""
    target_modules: str | tuple[str, ...] = DEFAULT_TARGET_MODULES
    """Layers that get adapters: a regex matched against full module names, or a list of name
    suffixes. Default: attention and MLP of both stacks plus the depformer's per-group
    projections (dia2.model.adapter_files.DEFAULT_TARGET_MODULES)."""
    train_embeddings: bool = False
    """Also train the text-embedding rows of every token the corpus's training split uses (PEFT
    trainable_token_indices on transformer.text_embed.embedding); rows of other tokens stay the
    base's. What a new language needs: Dia2 rarely saw its words' tokens. The adapter stores only
    those rows."""
    modules_to_save: tuple[str, ...] = ()
    """Modules trained whole and saved in the adapter (PEFT modules_to_save), comma-separated, e.g.
    transformer.action_head,transformer.cb0_head: the decoder's output heads (when the next word
    starts; the semantic codebook). Dia2 has no text output head: text comes from the script."""
    full_finetune: bool = False
    """Train every weight instead of LoRA adapters; the run then writes a full model folder
    (`model/`) instead of `adapter/`, and rank/alpha/dropout/target_modules/train_embeddings/
    modules_to_save are unused (every embedding row and head trains)."""


@dataclass(frozen=True)
class QuantSection:
    """Quantization of the frozen base (QLoRA)."""

    mode: Literal["none", "4bit", "8bit"] = "none"
    """Quantize the frozen base's block linears with bitsandbytes before adding LoRA: 4bit (QLoRA:
    NF4 with double-quantized statistics) or 8bit (LLM.int8()); none keeps model.dtype. LoRA only."""


@dataclass(frozen=True)
class DataSection:
    """The corpus and how batches are drawn from it."""

    corpus: str | None = None
    """Corpus folder written by data prep (a `datasets` DatasetDict with train/validation splits
    plus corpus_meta.json). Required."""
    max_frames_per_batch: int = 3200
    """Grid columns per batch and process, padding included (utterances x longest grid; a grid has
    frames + max delay columns). The batch-size knob: lower it on out-of-memory."""
    bucket_size: int = 64
    """Utterances sorted by length together before they are cut into batches: larger means less
    padding, smaller means more varied batches."""
    uncond_prob: float = 0.15
    """Probability, per utterance, of the unconditional branch's input (main text -> zero,
    second text -> pad; spec section 7), which keeps classifier-free guidance working."""
    min_asr_confidence: float = 0.0
    """Skip rows whose transcript confidence (asr_confidence) is below this."""


@dataclass(frozen=True)
class LossSection:
    """Weights of the masked cross-entropies (spec section 7)."""

    action_weight: float = 1.0
    """Weight of the action (new-word) loss in the total."""
    action_pad_weight: float = 0.5
    """Per-target weight, within the action loss, of targets that are pad (no new word); new_word
    targets weigh 1 (Moshi's text-padding weight)."""
    audio_weight: float = 1.0
    """Weight of the audio loss (a weighted mean over codebook 0 and the depformer stages) in
    the total."""
    cb0_weight: float = 100.0
    """Per-target weight of codebook 0 (semantic, from the decoder's cb0 head) within the audio
    loss, relative to depformer_weight (Moshi weighs its semantic codebook x100)."""
    depformer_weight: float = 1.0
    """Per-target weight of codebooks 1..K-1 (the depformer stages) within the audio loss."""


@dataclass(frozen=True)
class OptimSection:
    """Optimizer, schedule and the numerics of a step."""

    steps: int = 1000
    """Optimizer steps to train for (each one is grad_accumulation batches per process). Raised on resume
    (`--resume optim.steps=N`), the learning-rate schedule is extended from where it stood, not restarted
    (finetune/schedule.py)."""
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up, down to lr x min_lr_ratio at the last step."""
    warmup_steps: int = 50
    """Steps of linear warm-up from 0 to lr."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine and linear schedules)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the gradient's global norm to this (0: no clipping)."""
    grad_accumulation: int = 1
    """Batches per optimizer step (per process). The step's gradient is the mean of theirs (and of
    every process's); each batch's loss is a mean over its own targets, so that equals the gradient
    of one batch holding them all when the batches hold as many targets each."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """Autocast of the forward pass: bf16, or no. auto: bf16 on CUDA, no on CPU."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass: much less memory, ~30% slower."""


@dataclass(frozen=True)
class EvalSection:
    """Held-out loss and audio samples during training."""

    every: int = 100
    """Evaluate every this many steps (0: only at the end). Always evaluates after the last step."""
    at_start: bool = True
    """Evaluate before the first step too: the baseline the adapter is measured against."""
    max_batches: int = 0
    """Validation batches per evaluation (0: the whole validation split)."""
    scripts: tuple[str, ...] = field(default=("[S1] Hello there, how are you doing today?",), metadata=SENTENCES)
    """Scripts spoken with the current weights at each evaluation, written to samples/step_N/."""
    seed: int = 0
    """Sampling seed of the sample scripts, so successive samples differ only by the weights."""
    max_sample_seconds: float = 20.0
    """Longest audio generated per sample script."""
    references: str | None = None
    """Folder of recordings of the target voice: each evaluation scores the sample scripts' speaker
    similarity to them (dia2-eval's scorer; scores.json beside the samples). None: no similarity."""
    asr_model: str | None = None
    """faster-whisper model name or local folder that scores the sample scripts' WER/CER at each
    evaluation. None: no WER/CER."""
    language: str | None = None
    """Language the sample scripts speak (a Whisper code: de, es ...): eval.asr_model is told it and
    WER/CER normalise for it (numbers spelled out). None: detected, compared as written."""
    metric: Literal["loss", "wer", "cer", "similarity"] = "loss"
    """What keep_best ranks evaluations by: held-out loss, or the samples' mean WER or CER (lower is
    better), or their mean speaker similarity (higher is better)."""
    keep_best: bool = False
    """After each evaluation that improves eval.metric, copy the adapter to best/ with best.json
    (the step and every score)."""

    def __post_init__(self) -> None:
        needs = {"wer": ("asr_model", self.asr_model), "cer": ("asr_model", self.asr_model),
                 "similarity": ("references", self.references)}
        if self.keep_best and self.metric in needs and needs[self.metric][1] is None:
            key = needs[self.metric][0]
            raise TrainConfigError(f"eval.keep_best by eval.metric={self.metric} needs eval.{key}: set it, or rank by another metric")
        if self.keep_best and self.metric != "loss" and not self.scripts:
            raise TrainConfigError(f"eval.keep_best by eval.metric={self.metric} scores eval.scripts, which is empty: add a script")


@dataclass(frozen=True)
class OutputSection:
    """Where the run is written, checkpoints, trackers, and publishing."""

    dir: str = "runs"
    """Folder holding run folders."""
    name: str | None = None
    """Run folder name under dir; default: the config file's name (without .yaml)."""
    save_every: int = 250
    """Write a resumable checkpoint every this many steps (0: only after the last step)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    resume: str = "none"
    """none: start fresh (a run folder that already has checkpoints is refused); auto: continue
    from the run's newest checkpoint; or the path of a checkpoint folder to continue from."""
    export_merged: bool = False
    """Also write merged/: base + adapter folded into full weights in the published key layout,
    loadable as a base model (--export-merged)."""
    push_to_hub: str | None = None
    """Hub repo id to upload the adapter and its model card to after training (--push-to-hub)."""
    hub_private: bool = True
    """Create the Hub repo as private."""
    hub_dry_run: bool = False
    """Write the model card and list the upload without contacting the Hub."""
    tracker: Literal["none", "wandb", "tensorboard"] = "none"
    """Experiment tracker for metrics and audio samples (wandb works offline with WANDB_MODE=offline);
    written under the run folder."""
    project: str = "dia2-finetune"
    """Tracker project name."""
    license: str = "apache-2.0"
    """License of the adapter, stated on the model card."""
    consent: str = ""
    """Statement that the recorded speakers consented to this voice model (shown on the model
    card; pushing to the Hub requires it)."""


@dataclass(frozen=True)
class TrainConfig:
    """A training run: `accelerate launch finetune/train.py --config PRESET.yaml [key=value ...]`."""

    seed: int = 0
    """Seed of everything random: LoRA init, data order, unconditional dropout, LoRA dropout."""
    model: ModelSection = field(default_factory=ModelSection)
    """The base model (`model.*` keys)."""
    lora: LoraSection = field(default_factory=LoraSection)
    """The adapter, or full fine-tuning (`lora.*`)."""
    quant: QuantSection = field(default_factory=QuantSection)
    """QLoRA: the 4-bit base (`quant.*`)."""
    data: DataSection = field(default_factory=DataSection)
    """The corpus and batching (`data.*`)."""
    loss: LossSection = field(default_factory=LossSection)
    """Loss weights per stream (`loss.*`)."""
    optim: OptimSection = field(default_factory=OptimSection)
    """Optimizer, schedule, precision and memory (`optim.*`)."""
    eval: EvalSection = field(default_factory=EvalSection)
    """Held-out loss and spoken samples (`eval.*`)."""
    output: OutputSection = field(default_factory=OutputSection)
    """The run folder, checkpoints, export and Hub push (`output.*`)."""


SECTIONS: dict[str, type] = sections(TrainConfig)


def check_config(cfg: TrainConfig) -> None:
    """Value checks a type cannot express; each error names its key."""
    checks = [
        (cfg.data.corpus is not None, "data.corpus is required: pass data.corpus=PATH (a corpus folder from data prep)"),
        (cfg.lora.rank > 0, "lora.rank must be > 0"),
        (cfg.lora.alpha > 0, "lora.alpha must be > 0"),
        (0 <= cfg.lora.dropout < 1, "lora.dropout must be in [0, 1)"),
        (not (cfg.lora.full_finetune and cfg.quant.mode != "none"),
         "lora.full_finetune cannot train a quantized base: set quant.mode=none, or lora.full_finetune=false for QLoRA"),
        # AdamW would update the bf16 weights in place: updates below bf16's resolution
        # (~1/256 of a weight) round away. Mixed precision keeps float32 weights and bf16 compute.
        (not (cfg.lora.full_finetune and cfg.model.dtype == "bfloat16"),
         ("model.dtype=bfloat16 with lora.full_finetune=true would run AdamW on bf16 weights and lose small "
          "updates to rounding: set model.dtype=float32 (or auto) and optim.mixed_precision=bf16 for bf16 compute")),
        (not (cfg.eval.keep_best and cfg.lora.full_finetune),
         "eval.keep_best keeps a LoRA adapter and a full fine-tune (lora.full_finetune=true) has none: set eval.keep_best=false"),
        (cfg.data.max_frames_per_batch > 0, "data.max_frames_per_batch must be > 0"),
        (cfg.data.bucket_size > 0, "data.bucket_size must be > 0"),
        (0 <= cfg.data.uncond_prob < 1, "data.uncond_prob must be in [0, 1)"),
        (all(w >= 0 for w in dataclasses.astuple(cfg.loss)), "loss weights must be >= 0"),
        (cfg.loss.cb0_weight + cfg.loss.depformer_weight > 0, "loss.cb0_weight and loss.depformer_weight cannot both be 0"),
        (cfg.optim.steps > 0, "optim.steps must be > 0"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (0 <= cfg.optim.warmup_steps, "optim.warmup_steps must be >= 0"),
        (0 <= cfg.optim.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]"),
        (all(0 <= b < 1 for b in cfg.optim.betas), "optim.betas must be in [0, 1)"),
        (cfg.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0: no clipping)"),
        (cfg.optim.grad_accumulation >= 1, "optim.grad_accumulation must be >= 1"),
        (cfg.eval.every >= 0 and cfg.eval.max_batches >= 0, "eval.every and eval.max_batches must be >= 0"),
        (cfg.eval.max_sample_seconds > 0, "eval.max_sample_seconds must be > 0"),
        (cfg.output.save_every >= 0, "output.save_every must be >= 0 (0: only after the last step)"),
        (cfg.output.keep_last >= 1, "output.keep_last must be >= 1"),
        (bool(cfg.output.name) and "/" not in (cfg.output.name or ""), "output.name must be a plain folder name"),
        (not cfg.lora.full_finetune or cfg.output.push_to_hub is None,
         "output.push_to_hub publishes a LoRA adapter; a full fine-tune writes model/, upload that folder yourself"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainConfigError(message)
    repo = cfg.output.push_to_hub
    if repo is not None and (problem := hub_repo_id_problem(repo)) is not None:
        raise TrainConfigError(f"output.push_to_hub={repo} (--push-to-hub): {problem}")
