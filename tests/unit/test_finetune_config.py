"""finetune.config and finetune.config_file: presets, typed key=value overrides, strict keys, and the generated --help."""

from dataclasses import fields

import pytest

from dia2.options import field_docs
from finetune.config import SECTIONS, TrainConfig, TrainConfigError
from finetune.config_file import help_text, load_config, save_config
from tests.conftest import REPO_ROOT

PRESETS = REPO_ROOT / "configs" / "train"


@pytest.mark.parametrize(
    "preset, base, quant, checkpointing",
    [
        ("tiny-cpu", "tiny", "none", False),
        ("dia2-1b-lora", "nari-labs/Dia2-1B", "none", True),
        ("dia2-2b-lora", "nari-labs/Dia2-2B", "none", True),
        ("dia2-2b-qlora", "nari-labs/Dia2-2B", "4bit", True),
    ],
)
def test_every_preset_loads(preset, base, quant, checkpointing):
    cfg = load_config(PRESETS / f"{preset}.yaml", ["data.corpus=corpora/me"])
    assert cfg.model.base == base and cfg.quant.mode == quant and cfg.optim.gradient_checkpointing == checkpointing
    assert cfg.output.name == preset and not cfg.lora.full_finetune
    assert cfg.data.uncond_prob == 0.15 and cfg.loss.cb0_weight == 100.0 and cfg.loss.action_pad_weight == 0.5


def test_every_preset_is_covered():
    assert {p.stem for p in PRESETS.glob("*.yaml")} == {
        "tiny-cpu", "dia2-1b-lora", "dia2-2b-lora", "dia2-2b-qlora",
        "tiny-new-language", "dia2-2b-new-language-lora", "dia2-2b-new-language-full",
    }


@pytest.mark.parametrize(
    "preset, base, full",
    [("tiny-new-language", "tiny", False), ("dia2-2b-new-language-lora", "nari-labs/Dia2-2B", False),
     ("dia2-2b-new-language-full", "nari-labs/Dia2-2B", True)],
)
def test_new_language_presets_load(preset, base, full):
    """The new-language recipe's presets: LoRA ones train embeddings and heads too, the full one everything."""
    cfg = load_config(PRESETS / f"{preset}.yaml", ["data.corpus=corpora/de"])
    assert cfg.model.base == base and cfg.lora.full_finetune == full and cfg.output.name == preset
    if not full:
        assert cfg.lora.train_embeddings and cfg.lora.modules_to_save == ("transformer.action_head", "transformer.cb0_head")
        assert cfg.lora.rank >= 16
    else:
        assert cfg.eval.scripts == () and cfg.model.dtype == "float32"


def test_overrides_are_typed_by_their_field():
    cfg = load_config(PRESETS / "tiny-cpu.yaml", [
        "data.corpus=c", "optim.lr=3e-4", "optim.steps=7", "lora.full_finetune=true", "optim.betas=[0.8, 0.99]",
        "eval.scripts=[S1] Hi there.", "model.base_name=null", "lora.target_modules=[q_proj, v_proj]", "output.name=123",
    ])
    assert cfg.optim.lr == 3e-4 and cfg.optim.steps == 7 and cfg.lora.full_finetune is True
    assert cfg.optim.betas == (0.8, 0.99) and cfg.eval.scripts == ("[S1] Hi there.",)
    assert cfg.model.base_name is None and cfg.lora.target_modules == ("q_proj", "v_proj")
    assert cfg.output.name == "123"


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\); valid keys of optim: steps, lr, "),
        ("optimizer.lr=1", r"unknown config key 'optimizer' \(did you mean 'optim'\?\); valid keys of the config: seed, model, "),
        ("optim.steps=1.5", r"'optim.steps' must be int, got '1.5'"),
        ("optim.lr=fast", r"'optim.lr' must be float, got 'fast'"),
        ("lora.full_finetune=maybe", r"'lora.full_finetune' must be bool"),
        ("output.tracker=mlflow", r"'output.tracker' must be one of none\|wandb\|tensorboard"),
        ("optim.betas=[0.9]", r"'optim.betas' must be \[float, float\]"),
        ("optim.lr=-1", r"optim.lr must be > 0"),
        ("quant.mode=4bit lora.full_finetune=true", r"lora.full_finetune cannot train a quantized base"),
        ("model.dtype=bfloat16 lora.full_finetune=true", r"model.dtype=bfloat16 with lora.full_finetune=true would run AdamW on bf16"),
        ("optim", r"override 'optim' is not key=value"),
        ("eval.keep_best=true lora.full_finetune=true", r"eval.keep_best keeps a LoRA adapter and a full fine-tune"),
        ("eval.keep_best=true eval.metric=similarity", r"eval.keep_best by eval.metric=similarity needs eval.references"),
        ("eval.metric=mos", r"'eval.metric' must be one of loss\|wer\|cer\|similarity"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, message):
    items = ["data.corpus=c", *override.split(" ")]
    with pytest.raises(TrainConfigError, match=message):
        load_config(PRESETS / "tiny-cpu.yaml", items)


def test_yaml_typos_are_errors_too(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(TrainConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(path, ["data.corpus=c"])
    with pytest.raises(TrainConfigError, match="data.corpus is required"):
        load_config(PRESETS / "tiny-cpu.yaml")
    with pytest.raises(TrainConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PRESETS / "dia2-2b-qlora.yaml", ["data.corpus=c", "optim.lr=5e-5", "lora.target_modules=[a, b]"])
    save_config(cfg, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml") == cfg


def test_every_field_is_documented_once_and_listed_in_help():
    text = help_text()
    for name, cls in [("", TrainConfig), *SECTIONS.items()]:
        docs = field_docs(cls)
        for f in fields(cls):
            if cls is TrainConfig and f.name in SECTIONS:
                continue
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            key = f"{name}.{f.name}" if name else f.name
            assert f"  {key} (" in text
    assert "Peak learning rate (AdamW)." in text and "one of none|4bit|8bit" in text


def test_the_tiny_cpu_preset_keeps_every_utterance_data_prep_makes_by_default(tiny_config):
    """The longest row prep keeps at its defaults (up to --max-seconds of speech, as many frames as
    the context budget leaves) trains on a grid of that many frames + the largest delay."""
    from data_prep.config import SegmentOptions, check_context_budget
    from dia2.data.teacher import tail_frames

    data = tiny_config.data
    longest_row = check_context_budget(SegmentOptions(), tiny_config.runtime.max_context_steps, max(data.delays),
                                       tail_frames(data))
    cfg = load_config(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml", ["data.corpus=c"])
    assert cfg.data.max_frames_per_batch >= longest_row + max(data.delays)


def test_the_tiny_cpu_sample_scripts_fit_at_the_slowest_pace(tiny_tts):
    import math

    from dia2.generation.config import GenerationConfig
    from dia2.model.config import FRAME_RATE

    cfg = load_config(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml", ["data.corpus=unused"])
    limit = math.ceil(cfg.eval.max_sample_seconds * FRAME_RATE)
    machine = tiny_tts._loop(tiny_tts.parse("[S1] Hi."), GenerationConfig(), None, None).machine
    tail = max(tiny_tts.model.config.data.delays) + machine.max_padding
    for script in cfg.eval.scripts:
        # Each word: its forced pad frames, at most max_padding frames before the next word is forced.
        slowest = machine.initial_padding + sum(max(len(e.tokens), machine.max_padding) + 1 for e in tiny_tts.parse(script))
        assert slowest + tail + 1 <= limit, (script, slowest + tail + 1, limit)
        for seed in range(3):
            assert not tiny_tts.generate(script, GenerationConfig(seed=seed, max_frames=limit)).truncated
