"""The model card (README.md) of a voice adapter, written from the record of the run that trained
it (the "run" of the adapter folder's voice.json: `dia2.generation.voice`).

It states what a user of the adapter needs: the base model, how to load it, who speaks, the LoRA
configuration, the data (hours, speakers), held-out figures before and after training, the
samples, the license, and the speakers' consent statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_FIGURES = ("loss", "loss_action", "loss_cb0", "loss_depformer", "acc_action", "acc_cb0", "acc_depformer")


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repo id (owner/name) rather than a local path."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def model_card(voice: dict[str, Any], repo: str | None = None) -> str:
    """README.md text for the adapter described by `voice` (the run's record)."""
    base = voice["base_model"]
    training, corpus = voice["training"], voice["corpus"]
    repo_ref = repo or "path/to/adapter"
    front = ["---"]
    if is_hub_id(base):
        front.append(f"base_model: {base}")
    if voice.get("language"):  # dia2-prep --language: the Hub lists the adapter under it
        front.append(f"language: [{voice['language']}]")
    front += [
        "library_name: peft",
        f"license: {voice['license']}",
        "pipeline_tag: text-to-speech",
        "tags: [dia2, lora, text-to-speech, voice]",
        "---",
    ]
    lines = front + [
        "",
        f"# {repo.split('/')[-1] if repo else 'Dia2 voice adapter'}",
        "",
        f"A LoRA adapter for the Dia2 dialogue TTS model `{base}`, trained with dia2-toolkit "
        "(`accelerate launch finetune/train.py`).",
        "",
        "## Use",
        "",
        "```bash",
        f'dia2-infer --model {base} --adapter {repo_ref} --text "[S1] Hello there." out.wav',
        "```",
        "",
        "```python",
        "from dia2 import Dia2, GenerationConfig",
        f'tts = Dia2.from_repo("{base}", adapter="{repo_ref}")',
        'tts.generate("[S1] Hello there.", GenerationConfig(seed=0)).save("out.wav")',
        "```",
        "",
        "It is a plain PEFT folder: `PeftModel.from_pretrained(Dia2Model.from_pretrained(base), adapter)` loads it too. "
        "With its voice.json it is also a Dia2 voice folder: `dia2-infer --voice FOLDER` and the speech server's "
        "voices folder take a local copy.",
        "",
        *_speakers(voice["speakers"]),
        *_lora(training),
        *_data(corpus),
        *_evaluation(training),
        *_samples(voice.get("samples", [])),
        "## Consent",
        "",
        voice.get("consent") or "_No consent statement was given._",
        "",
        "## License",
        "",
        f"{voice['license']}. The base model's own license applies to the base weights.",
        "",
    ]
    return "\n".join(lines)


def _speakers(speakers: dict[str, list[str]]) -> list[str]:
    rows = [f"| [{tag}] | {', '.join(names)} |" for tag, names in speakers.items()]
    return ["## Speakers", "", "| tag | speaker(s) in the corpus |", "|---|---|", *rows, ""]


def _lora(training: dict[str, Any]) -> list[str]:
    if training.get("full_finetune"):
        return ["## Training", "", "Full fine-tuning of every weight.", ""]
    lora = training["lora"]
    return [
        "## LoRA",
        "",
        "| rank | alpha | dropout | quantized base | trainable parameters |",
        "|---|---|---|---|---|",
        f"| {lora['rank']} | {lora['alpha']} | {lora['dropout']} | {training['quantization']} | "
        f"{training['parameters']['trainable']:,} |",
        "",
        f"Target modules: `{lora['target_modules']}`",
        "",
        f"{training['steps']} optimizer steps on {training['processes']} process(es).",
        "",
    ]


def _data(corpus: dict[str, Any]) -> list[str]:
    meta = corpus["meta"]
    return [
        "## Data",
        "",
        f"- {corpus['train_utterances']} training utterances ({corpus['train_hours']:.2f} h), "
        f"{corpus['validation_utterances']} held out ({corpus['validation_hours']:.2f} h)",
        f"- codec `{meta['codec']}` ({meta['codec_fingerprint']}), tokenizer {meta['tokenizer_fingerprint']}, "
        f"transcripts by `{meta['asr_model']}`",
        "",
    ]


def _evaluation(training: dict[str, Any]) -> list[str]:
    before, after = training.get("eval_start"), training.get("eval_final")
    if not after:
        return ["## Evaluation", "", "_No held-out split was evaluated._", ""]
    rows = [
        f"| {name} | {before[name]:.4f} | {after[name]:.4f} |" if before else f"| {name} | - | {after[name]:.4f} |"
        for name in _FIGURES
    ]
    return ["## Evaluation (held-out split)", "", "| figure | before training | after |", "|---|---|---|", *rows, ""]


def _samples(samples: list[dict[str, str]]) -> list[str]:
    if not samples:
        return []
    rows = [f"- [samples/{Path(s['file']).name}](samples/{Path(s['file']).name}): {s['script']}" for s in samples]
    return ["## Samples", "", "Spoken by the adapted model after the last step (fixed seed):", "", *rows, ""]
