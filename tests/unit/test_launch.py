"""dia2.launch: the one launch layer every command stands on (issue 25, item 1): one spelling of
the model source on every command (--model, alias --hf), the shared checks written once, the one
`main` shape, the engine's options defined once in EngineConfig, and imports that stay light."""

from __future__ import annotations

import argparse
import ast
import json
import logging
import signal
import subprocess
import sys
from dataclasses import dataclass, field, fields

import pytest

from dia2.errors import Dia2Error
from dia2.options import CliValue, FlagParser, OptionError, build, flag_values
from dia2.serving.config import EngineConfig
from tests.conftest import HEAVY_MODULES, REPO_ROOT, child_env

PRESET = str(REPO_ROOT / "configs" / "train" / "tiny-cpu.yaml")


def squashed(text: str) -> str:
    return " ".join(text.split())  # argparse re-wraps help lines


# --- the model source: one spelling on every command ----------------------------------------------


def _infer(*args: str) -> str:
    from dia2.cli import build_parser, parse_options

    return parse_options(build_parser(), [*args, "--text", "hi", "out.wav"]).model.source


def _server(*args: str) -> str:
    from dia2.api_server import build_parser, parse_options

    return parse_options(build_parser(), list(args)).model.source


def _studio(*args: str) -> str:
    from dia2.studio.app import build_parser, parse_options

    return parse_options(build_parser(), list(args)).model.source


def _eval(*args: str) -> str:
    from dia2.evaluation.cli import build_parser, parse_options

    return parse_options(build_parser(), [*args, "--references", "refs", "out"])[1].model


def _prep(*args: str) -> str:
    from data_prep.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(["in", "out", *args])).model.source


def _train(*args: str) -> str:
    from finetune.train import parse_args

    return parse_args(["--config", PRESET, "data.corpus=c", *args]).model.base


COMMANDS = {"dia2-infer": _infer, "server": _server, "studio": _studio, "dia2-eval": _eval, "dia2-prep": _prep,
            "trainer": _train}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["--model", "--hf"])
def test_every_command_takes_the_model_source_as_model_and_as_its_alias_hf(command, flag, tmp_path):
    folder = tmp_path / "my-dia2"  # a local model folder: the server and the studio check that it exists
    folder.mkdir()
    assert COMMANDS[command](flag, str(folder)) == str(folder)
    assert COMMANDS[command](f"{flag}=tiny") == "tiny"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from data_prep.cli import build_parser as prep
    from dia2.api_server import build_parser as server
    from dia2.cli import build_parser as infer
    from dia2.evaluation.cli import build_parser as evaluation
    from dia2.studio.app import build_parser as studio

    return {"dia2-infer": infer(), "server": server(), "studio": studio(), "dia2-eval": evaluation(), "dia2-prep": prep()}


def test_help_shows_the_one_spelling_and_names_the_alias(capsys):
    for name, parser in _parsers().items():
        assert "--model MODEL, --hf MODEL" in squashed(parser.format_help()), name
    from finetune.train import main as train_main

    with pytest.raises(SystemExit):
        train_main(["--help"])
    assert "--model MODEL, --hf MODEL same as model.base=MODEL" in squashed(capsys.readouterr().out)


def test_the_trainer_keeps_the_key_model_base_and_its_flag_wins_over_the_preset():
    from finetune.config_file import load_config

    assert load_config(PRESET, ["data.corpus=c", "model.base=x/y"]).model.base == "x/y"
    assert load_config(PRESET, ["data.corpus=c"]).model.base == "tiny"  # the preset's own
    assert _train("--model", "x/y") == "x/y"


# --- the shared checks, once ----------------------------------------------------------------------


def _given(*argv: str) -> dict:
    """The model flags of an argv as the commands see them (typed values, their flags)."""
    from dia2.launch.flags import FLAG_ALIASES
    from dia2.launch.model import ModelOptions
    from dia2.options import add_flags

    parser = FlagParser()
    add_flags(parser, ModelOptions, dest="model.", aliases=FLAG_ALIASES)
    return flag_values(parser.parse_args(list(argv))).get("model", {})


@pytest.mark.parametrize("argv, clash", [
    (["--tiny", "--model", "x/y"], "--model x/y"),
    (["--tiny", "--hf", "x/y"], "--hf x/y"),  # named as typed
    (["--tiny", "--config", "c.json"], "--config c.json"),
    (["--tiny", "--weights", "w.safetensors", "--hf", "a/b"], "--weights w.safetensors, --hf a/b"),
])
def test_tiny_beside_another_model_source_is_refused_naming_it(argv, clash):
    from dia2.launch.model import check_tiny

    with pytest.raises(OptionError, match=f"^--tiny is --model tiny, the embedded demo model; it cannot be combined with {clash}$"):
        check_tiny(_given(*argv))


def test_tiny_alone_or_with_model_tiny_is_one_model_source():
    from dia2.launch.model import ModelOptions, check_tiny

    for argv in (["--tiny"], ["--tiny", "--model", "tiny"], ["--model", "x/y"], []):
        check_tiny(_given(*argv))
    assert ModelOptions(tiny=True).source == ModelOptions(model="tiny").source == "tiny"
    assert ModelOptions().source == "nari-labs/Dia2-2B"


@pytest.mark.parametrize("command", ["dia2-infer", "server", "studio", "dia2-prep"])
def test_every_command_with_tiny_makes_the_same_check(command):
    with pytest.raises(OptionError, match="--tiny is --model tiny.*cannot be combined with --hf x/y"):
        COMMANDS[command]("--tiny", "--hf", "x/y")


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_a_port_no_socket_can_listen_on_is_refused(port):
    from dia2.launch.flags import check_port

    with pytest.raises(OptionError, match=f"^--port {port}: use 1-65535$"):
        check_port(port)
    check_port(1)
    check_port(65535)


def test_name_value_items_are_split_and_a_half_item_is_refused_with_the_form():
    from dia2.launch.flags import join_repeated, named_items

    assert join_repeated(["--tiny", "--adapter", "a=x", "--port", "1", "--adapter=b=y"], ("--adapter",)) == \
        ["--tiny", "--adapter", "a=x,b=y", "--port", "1"]
    assert named_items(["a=x", "b=y=z"], "--voice-alias", "OPENAI_NAME=VOICE", "alloy=me") == [("a", "x"), ("b", "y=z")]
    for item in ("nameonly", "=x", "a="):
        with pytest.raises(OptionError, match=f"^--voice-alias '{item}': write OPENAI_NAME=VOICE, e.g. --voice-alias alloy=me$"):
            named_items([item], "--voice-alias", "OPENAI_NAME=VOICE", "alloy=me")


def test_an_adapter_item_naming_a_missing_folder_is_refused(tmp_path):
    from dia2.launch.flags import adapter_items

    with pytest.raises(OptionError, match="NAME=PATH"):
        adapter_items(["nameonly"])
    with pytest.raises(OptionError, match=f"{tmp_path / 'nope'}"):
        adapter_items([f"me={tmp_path / 'nope'}"])
    assert adapter_items(["me=someone/their-voice"]) == [("me", "someone/their-voice")]  # a Hub id: checked when fetched


@pytest.mark.parametrize("command, flags", [
    ("server", ["--merge-adapter", "someone/voice", "--keep-merge-adapter-unmerged"]),
    ("studio", ["--merge-adapter", "someone/voice", "--keep-merge-adapter-unmerged"]),
])
def test_a_served_model_refuses_an_unmerged_adapter_the_engine_would_ignore(command, flags):
    with pytest.raises(OptionError, match="--keep-merge-adapter-unmerged: the engine applies its adapters per request"):
        COMMANDS[command]("--tiny", *flags)


# --- EngineConfig: a section of the server's and the studio's options, its defaults once -----------


def _options(command: str, *args: str):
    if command == "server":
        from dia2.api_server import build_parser, parse_options
    else:
        from dia2.studio.app import build_parser, parse_options
    return parse_options(build_parser(), ["--tiny", *args])


@pytest.mark.parametrize("command", ["server", "studio"])
def test_the_engine_flags_are_engine_config_with_its_defaults(command):
    assert _options(command).engine == EngineConfig()
    given = _options(command, "--slots", "2", "--max-queued", "0", "--max-prefix-frames", "300", "--max-adapters", "3",
                     "--max-adapter-rank", "16", "--cuda-graph")
    assert given.engine == EngineConfig(slots=2, max_queued=0, max_prefix_frames=300, max_adapters=3,
                                        max_adapter_rank=16, cuda_graph=True)
    assert _options(command, "--torch-compile").engine == EngineConfig(torch_compile=True)
    assert _options(command, "--no-packed-weights").engine == EngineConfig(packed_weights=False)
    parser = _parsers()[command]
    help_text = squashed(parser.format_help())
    for f in fields(EngineConfig):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    assert "(EngineFull; the server answers 429 with Retry-After). (default: 8)" in help_text


def test_max_queued_has_one_default_the_one_the_server_documents():
    from dia2.api_server import ServeOptions
    from dia2.studio.app import StudioSection

    assert EngineConfig().max_queued == 8
    # No option section re-declares an engine field: each is defined once, in EngineConfig.
    engine = {f.name for f in fields(EngineConfig)}
    for section in (ServeOptions, StudioSection):
        assert not engine & {f.name for f in fields(section)}, section.__name__


@pytest.mark.parametrize("command", ["server", "studio"])
@pytest.mark.parametrize("args, said", [
    (["--slots", "0"], "--slots 0: EngineConfig.slots must be >= 1, got 0"),
    (["--max-queued", "-1"], "--max-queued -1: EngineConfig.max_queued must be >= 0, got -1"),
    (["--max-adapter-rank", "0", "--slots", "2"], "--max-adapter-rank 0: EngineConfig.max_adapter_rank must be >= 1"),
    (["--cuda-graph", "--torch-compile"], r"EngineConfig.cuda_graph and torch_compile cannot both be on: pick one"),
])
def test_a_bad_engine_flag_is_named_as_typed(command, args, said):
    with pytest.raises(OptionError, match=f"^{said}"):
        _options(command, *args)


@dataclass(frozen=True)
class _WithEngine:
    """Options with an engine section."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine."""


def test_a_section_check_names_the_flags_it_is_about_as_typed():
    raw = {"engine": {"slots": CliValue("0", given_as="--slots"), "max_queued": CliValue("3", given_as="--max-queued")}}
    with pytest.raises(OptionError, match=r"^--slots 0: EngineConfig\.slots must be >= 1, got 0$"):
        build(_WithEngine, raw)
    # Not typed on a command line (YAML, the Python API): the message names the field alone.
    with pytest.raises(OptionError, match=r"^EngineConfig\.slots must be >= 1, got 0$"):
        build(_WithEngine, {"engine": {"slots": 0}})


# --- the main wrapper -------------------------------------------------------------------------------


def _command(run, *, stopped=None, parse=lambda: "options"):
    from dia2.launch.command import run_main

    parser = argparse.ArgumentParser(prog="cmd")
    return run_main("cmd", parse, run, parser=parser, stopped=stopped)


def test_an_option_error_is_answered_with_the_usage_and_exit_code_2(capsys):
    from dia2.launch.command import run_main

    def parse():
        raise OptionError("--x 1: use 2")

    with pytest.raises(SystemExit) as exit_info:
        run_main("cmd", parse, lambda o: 0, parser=argparse.ArgumentParser(prog="cmd"))
    assert exit_info.value.code == 2 and "usage: cmd" in capsys.readouterr().err
    # Without a flag parser (the trainer: config keys), it is one line and exit code 1, like any error.
    assert run_main("train", parse, lambda o: 0) == 1
    assert capsys.readouterr().err == "train: error: --x 1: use 2\n"


def test_an_error_a_user_can_fix_is_one_line_and_others_are_raised(capsys):
    def fails(error):
        def run(options):
            raise error
        return run

    assert _command(fails(Dia2Error("no such file: fix it"))) == 1
    assert capsys.readouterr().err == "cmd: error: no such file: fix it\n"
    with pytest.raises(RuntimeError):
        _command(fails(RuntimeError("a bug")))
    assert _command(lambda options: 3) == 3


@pytest.mark.parametrize("how, code, said", [("ctrl-c", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_a_stop_is_one_line_with_what_to_do_and_the_signals_exit_code(capsys, how, code, said):
    import os
    import time

    def run(options):
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        raise KeyboardInterrupt

    assert _command(run, stopped=lambda options: f"{options} kept; run it again") == code
    err = capsys.readouterr().err
    assert err.strip() == f"cmd: stopped by {said}: options kept; run it again"
    with pytest.raises(KeyboardInterrupt):  # a command without `stopped` stops as Python does
        _command(lambda options: (_ for _ in ()).throw(KeyboardInterrupt))


def test_the_log_level_follows_the_options(monkeypatch):
    levels = []
    monkeypatch.setattr("dia2.launch.command.setup_logging", lambda level, loggers=None: levels.append((level, loggers)))
    from dia2.launch.command import run_main

    run_main("cmd", lambda: True, lambda o: 0, log_level=lambda verbose: logging.INFO if verbose else logging.WARNING,
             loggers={"x": logging.DEBUG})
    assert levels == [(logging.INFO, {"x": logging.DEBUG})]


# --- imports: light, and one way ---------------------------------------------------------------------

ENTRY_POINTS = ("dia2.cli", "dia2.api_server", "dia2.studio.app", "dia2.evaluation.cli")
"""Modules that are commands: library code never imports them (they import dia2.launch)."""


def test_no_library_module_imports_a_command():
    offenders = []
    for path in sorted((REPO_ROOT / "dia2").rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            offenders += [f"{module} imports {n}" for n in names if n in ENTRY_POINTS and n != module]
    assert offenders == []


def test_the_launch_layer_imports_no_model_stack():
    """Every command imports dia2.launch before it has checked its options: nothing heavy may come
    with it. The main wrapper and the flags need not even torch (finetune.push runs without it)."""
    code = ("import sys, json; import dia2.launch.model, dia2.serving.config; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy} "
            "or m in ('dia2.generation.tts', 'dia2.serving.engine', 'dia2.model.network'))))")
    proc = subprocess.run([sys.executable, "-c", code.format(heavy=set(HEAVY_MODULES))], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=120, env=child_env())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    proc = subprocess.run([sys.executable, "-c", "import dia2.launch.command, dia2.launch.flags, dia2.serving.config"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
                          env=child_env(block=(*HEAVY_MODULES, "torch", "numpy")))
    assert proc.returncode == 0, proc.stderr
