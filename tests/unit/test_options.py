"""dia2.options: one way from user options to frozen configs, shared by dia2-infer, dia2-prep and
the trainer (flags and key=value overrides from the dataclass field docs, one coercion routine)."""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

import pytest

from data_prep.cli import main as prep_main
from dia2.cli import InferOptions, build_parser, parse_options
from dia2.generation.config import GenerationConfig
from dia2.generation.sampling import SamplingConfig
from dia2.launch.flags import PUBLISHED_SPELLING
from dia2.options import (
    SENTENCES,
    CliValue,
    OptionError,
    build,
    coerce,
    field_docs,
    help_text,
    parse_overrides,
    to_dict,
)
from finetune.config_file import load_config
from tests.conftest import REPO_ROOT


def infer(*args: str) -> InferOptions:
    return parse_options(build_parser(), [*args, "--text", "hi", "out.wav"])


def squashed(text: str) -> str:
    return "".join(text.split())  # argparse re-wraps help lines, even at hyphens


# --- dia2-infer: generation flags come from GenerationConfig / SamplingConfig -------------------


def test_every_generation_field_is_a_flag_whose_help_is_its_doc_and_default():
    help_text = squashed(build_parser().format_help())
    defaults = GenerationConfig()
    for f in fields(GenerationConfig):
        value = getattr(defaults, f.name)
        keys = [f"{f.name}.{s.name}" for s in fields(SamplingConfig)] if isinstance(value, SamplingConfig) else [f.name]
        for key in keys:
            flag = PUBLISHED_SPELLING.get(key, "--" + key.replace(".", "-").replace("_", "-"))
            section, _, leaf = key.rpartition(".")
            doc = field_docs(SamplingConfig)[leaf] if section else field_docs(GenerationConfig)[key]
            assert squashed(flag) in help_text, flag
            assert squashed(doc[1:]) in help_text, key  # nested docs start lower-cased after their section's
            default = getattr(getattr(defaults, section), leaf) if section else value
            if default not in (None, False):
                assert squashed(f"{doc[1:]} (default: {default})") in help_text, key
    for published in ("--cfg", "--temperature", "--topk", "--seed", "--max-frames", "--include-prefix"):
        assert published in help_text


def test_generation_flags_become_the_generation_config():
    assert infer().generation == GenerationConfig()
    options = infer("--cfg", "6", "--temperature", "0.9", "--text-topk", "7", "--seed", "3", "--include-prefix")
    expected = GenerationConfig(
        cfg_scale=6.0, audio=SamplingConfig(temperature=0.9, top_k=50), text=SamplingConfig(temperature=0.6, top_k=7),
        seed=3, include_prefix=True,
    )
    # --text-topk alone keeps the action stream's own default temperature (0.6, not SamplingConfig's 0.8).
    assert options.generation == expected


@pytest.mark.parametrize("args, message", [
    (["--topk", "many"], "'--topk' must be int, got 'many'"),
    (["--cfg", "strong"], "'--cfg' must be float, got 'strong'"),
    (["--seed", "1.5"], "'--seed' must be int or null, got '1.5'"),
    (["--cfg", "0"], "cfg_scale must be > 0"),
    (["--tiny", "--hf", "x/y"], "cannot be combined"),
])
def test_bad_flag_values_name_the_flag(args, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(".", r"\.")):
        infer(*args)


def test_an_unknown_flag_is_answered_with_the_closest_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        infer("--topkk", "3")
    assert exit_info.value.code == 2
    assert "dia2-infer: error: unknown flag(s) --topkk (did you mean --topk?)" in capsys.readouterr().err


def test_tiny_is_one_model_source_with_a_shorthand():
    assert infer("--tiny").model.source == infer("--hf", "tiny").model.source == "tiny"
    assert infer().model.source == "nari-labs/Dia2-2B"


# --- one coercion routine -------------------------------------------------------------------------


@pytest.mark.parametrize("value, hint, expected", [
    (CliValue("yes"), bool, True),
    (CliValue("0"), bool, False),
    (CliValue("12"), int, 12),
    (CliValue("1e-4"), float, 1e-4),
    (CliValue("123"), str, "123"),
    (CliValue("a/b.wav"), Path | None, Path("a/b.wav")),
    (CliValue("none"), Path | None, None),
    (CliValue("4bit"), Literal["8bit", "4bit"] | None, "4bit"),
    (CliValue("ann, bob"), tuple[str, ...], ("ann", "bob")),
    (CliValue("[0.8, 0.99]"), tuple[float, float], (0.8, 0.99)),
    (CliValue("q_proj,v_proj"), str | tuple[str, ...], "q_proj,v_proj"),  # a regex where a str is allowed
    ([0.8, 0.99], tuple[float, float], (0.8, 0.99)),  # YAML values come typed
    (3, float, 3.0),
])
def test_coerce_parses_by_the_field_type(value, hint, expected):
    got = coerce(value, hint, "key")
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("value, hint", [
    (CliValue("maybe"), bool), (CliValue("1.5"), int), (1.5, int), (True, int), (CliValue("x"), float),
    (CliValue("2bit"), Literal["8bit", "4bit"]), (CliValue("[0.9]"), tuple[float, float]), ([1], str), (None, str),
])
def test_coerce_refuses_what_the_type_cannot_hold(value, hint):
    with pytest.raises(OptionError, match=r"^'key' must be "):
        coerce(value, hint, "key")


@dataclass(frozen=True)
class _Inner:
    """A section."""

    rate: float = 0.5
    """A rate."""
    lines: tuple[str, ...] = field(default=(), metadata=SENTENCES)
    """Sentences."""


@dataclass(frozen=True)
class _Outer:
    """Top."""

    name: str = "x"
    """A name."""
    inner: _Inner = field(default_factory=lambda: _Inner(rate=0.25))
    """The section."""


def test_build_keeps_section_defaults_suggests_keys_and_round_trips():
    cfg = build(_Outer, parse_overrides(["inner.lines=[S1] Hi, there.", "name=7"]))
    assert cfg == _Outer(name="7", inner=_Inner(rate=0.25, lines=("[S1] Hi, there.",)))  # one sentence, commas kept
    assert build(_Outer, to_dict(cfg)) == cfg
    with pytest.raises(OptionError, match=r"unknown config key 'inner.rat' \(did you mean 'inner.rate'\?\)"):
        build(_Outer, parse_overrides(["inner.rat=1"]))
    with pytest.raises(OptionError, match="'name' is a value, not a section"):
        parse_overrides(["name.x=1"], {"name": "y"})
    assert "  inner.rate (float, default 0.25)\n      A rate." in help_text(_Outer)  # the section default, not the class one


def test_every_entry_point_reports_the_same_way(tmp_path, capsys):
    with pytest.raises(OptionError, match=r"^'optim.steps' must be int, got 'x'$"):
        load_config(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml", ["data.corpus=c", "optim.steps=x"])
    with pytest.raises(SystemExit) as exit_info:
        prep_main([str(tmp_path), str(tmp_path / "out"), "--beam-size", "x"])
    assert exit_info.value.code == 2 and "dia2-prep: error: '--beam-size' must be int, got 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prep_main([str(tmp_path), str(tmp_path / "out"), "--tiny", "--model", "x/y"])
    assert "--tiny is --model tiny" in capsys.readouterr().err


def test_every_unknown_flag_is_named_and_text_flags_keep_the_word_none(capsys):
    from dia2.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--zzzzzz", "--tmperature", "1", "out.wav"])
    err = capsys.readouterr().err
    assert "--zzzzzz" in err and "--tmperature (did you mean --temperature?)" in err
    # "none" is text for a text flag, and None only for a flag whose field cannot hold text.
    assert coerce(CliValue("none", "--text"), str | None, "--text") == "none"
    assert coerce(CliValue("none", "--seed"), int | None, "--seed") is None
    assert coerce(CliValue("null"), str | None, "output.push_to_hub") is None


def test_a_yaml_bool_reads_as_the_literal_choice_it_was_written_as():
    assert coerce(False, Literal["auto", "no", "bf16"], "optim.mixed_precision") == "no"
    with pytest.raises(OptionError, match="optim.mixed_precision"):
        coerce(True, Literal["auto", "no", "bf16"], "optim.mixed_precision")


def test_save_voice_without_prefix_recordings_is_refused_before_loading(capsys, tmp_path):
    from dia2.cli import main as infer_main

    with pytest.raises(SystemExit) as exit_:
        infer_main(["--tiny", "--text", "[S1] Hi.", "--save-voice", str(tmp_path / "v"), str(tmp_path / "o.wav")])
    assert exit_.value.code == 2 and "--save-voice" in capsys.readouterr().err
    assert not (tmp_path / "v").exists()


def test_cfg_is_one_spelling_everywhere_and_cfg_scale_its_alias():
    from dia2.evaluation.cli import build_parser as eval_parser
    from dia2.evaluation.cli import parse_options as eval_options

    for flag in ("--cfg", "--cfg-scale"):
        assert infer(flag, "2.5").generation.cfg_scale == 2.5
        _, options = eval_options(eval_parser(), ["--references", "refs", flag, "2.5", "out"])
        assert options.cfg_scale == 2.5
    for parser in (build_parser(), eval_parser()):
        assert "--cfg CFG_SCALE, --cfg-scale CFG_SCALE" in " ".join(parser.format_help().split())
