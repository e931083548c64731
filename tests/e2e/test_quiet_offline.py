"""No command makes a network request the user did not ask for, and the README's commands print no
warning a user would read as an error (issue 27, item 5).

The child processes run with HF_HUB_OFFLINE unset, as on a user's machine, and with every
connection beyond this machine refused and recorded (`tests/child/sitecustomize.py`): importing
bitsandbytes used to ask the Hub whether the publisher of an optional CPU kernel is trusted, and
to print "Failed to load CPU gemm_4bit_forward from kernels-community" on every command.
"""

from __future__ import annotations

import re
import time
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT, child_env

ALARMING = re.compile(r"warn|fail|error|traceback|could not|cannot", re.IGNORECASE)


def python(code_or_args: list[str], tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run Python in a child with the network blocked; returns the process and the network attempts."""
    log = tmp_path / "network.log"
    proc = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                          env=child_env(network_log=log, **env))
    return proc, (log.read_text().splitlines() if log.exists() else [])


@pytest.fixture(scope="module")
def adapter(tiny_bundle_dir, tmp_path_factory) -> Path:
    """A trained-looking LoRA adapter of the tiny model (lora_B not zero)."""
    from dia2.model.adapters import lora_model
    from dia2.model.network import Dia2Model

    torch.manual_seed(0)
    model = lora_model(Dia2Model.from_pretrained(tiny_bundle_dir), rank=2, alpha=4, base_model_name_or_path="tiny")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(folder), save_embedding_layers=False)
    return folder


def test_nothing_imports_bitsandbytes_unless_8_or_4_bit_is_asked_for(tmp_path):
    code = ("import sys, dia2.model.adapters, dia2.model.lora_bank, dia2.evaluation.run, finetune.evaluation, "
            "finetune.train; print('bitsandbytes' in sys.modules)")
    proc, attempts = python(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False" and attempts == []
    assert not ALARMING.search(proc.stderr), proc.stderr


def test_infer_with_an_adapter_asks_no_network_and_prints_no_warning(adapter, tiny_cache, tmp_path):
    out = tmp_path / "speech.wav"
    proc, attempts = python(["-m", "dia2.cli", "--tiny", "--adapter", str(adapter), "--text", "[S1] Hello there.",
                             "--seed", "0", str(out)], tmp_path, DIA2_CACHE=str(tiny_cache))
    assert proc.returncode == 0, proc.stderr
    assert attempts == [] and out.is_file()
    assert not ALARMING.search(proc.stderr), proc.stderr


def test_4bit_asks_no_network_and_says_what_it_means_in_one_line(tiny_bundle_dir, tmp_path):
    code = ("import logging; logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s'); "
            "from dia2.model.network import Dia2Model; from dia2.model.quant import quantize; "
            f"quantize(Dia2Model.from_pretrained({str(tiny_bundle_dir)!r}), '4bit')")
    proc, attempts = python(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert attempts == []
    lines = [line for line in proc.stderr.splitlines() if "bitsandbytes" in line or "kernel" in line]
    assert len(lines) <= 1 and not ALARMING.search(" ".join(lines)), proc.stderr


def test_without_network_a_hub_model_fails_at_once_with_one_clear_error(tmp_path):
    """Offline with HF_HUB_OFFLINE unset, the Hub client retried every file five times with a
    warning each (24 warnings, about a minute). The bound is generous: a Python start-up and the
    imports take a few seconds; the retries alone took over 30."""
    started = time.perf_counter()
    proc, attempts = python(["-m", "dia2.cli", "--hf", "nobody/NoSuchDia2", "--text", "[S1] Hello.", str(tmp_path / "o.wav")],
                            tmp_path, DIA2_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    seconds = time.perf_counter() - started
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("dia2-infer: error: cannot get") and "nobody/NoSuchDia2" in line, line
    assert "the Hub cannot be reached" in line and "not in the local cache" in line
    assert len(attempts) <= 1 and seconds < 30
