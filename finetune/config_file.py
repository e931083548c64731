"""Training configs in and out: YAML presets plus `key=value` overrides -> a checked TrainConfig,
the resolved config written with a run, and the --help text generated from the field docs.

    cfg = load_config("configs/train/tiny-cpu.yaml", ["optim.lr=3e-4", "data.corpus=corpora/me"])

Parsing is `dia2.options`, shared with every entry point: loading is strict (an unknown section
or key is an error that lists the valid ones, with the closest match) and every value is checked
against its field's type (`optim.lr=abc` names `optim.lr` and the type it wants). Command-line
values are parsed by their field's type, so `output.name=123` is the string "123" and
`optim.lr=1e-4` a float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dia2.options import build, parse_overrides
from dia2.options import help_text as options_help
from dia2.options import to_dict as config_to_dict
from finetune.config import TrainConfig, TrainConfigError, check_config


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML preset (or the defaults when path is None), apply `a.b=value` overrides, check."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"config file {path} not found; presets live in configs/train/")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise TrainConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise TrainConfigError(f"{path} must hold a mapping of sections (model:, lora:, ...)")
    cfg = build(TrainConfig, parse_overrides(overrides, raw, error=TrainConfigError), error=TrainConfigError)
    if cfg.output.name is None:
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, name=Path(path).stem if path else "run"))
    check_config(cfg)
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML; `load_config` of the file gives `cfg` back."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    return path


def help_text(width: int = 100) -> str:
    """Every config key with its type, default and doc: the trainer's --help."""
    return options_help(TrainConfig, width)
