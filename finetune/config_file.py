"""Training configs in and out: YAML presets plus `key=value` overrides -> a checked TrainConfig,
the resolved config written with a run, and the --help text generated from the field docs.

    cfg = load_config("configs/train/tiny-cpu.yaml", ["optim.lr=3e-4", "data.corpus=corpora/me"])

Loading is strict: an unknown section or key is an error that lists the valid ones (with the
closest match), and every value is checked against its field's type (`optim.lr=abc` names
`optim.lr` and the type it wants). Command-line values are parsed by their field's type, so
`output.name=123` is the string "123" and `optim.lr=1e-4` a float.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from dia2.options import field_docs
from finetune.config import SECTIONS, ConfigError, TrainConfig, check_config

# --- loading -----------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML preset (or the defaults when path is None), apply `a.b=value` overrides, check."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found; presets live in configs/train/")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model:, lora:, ...)")
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(TrainConfig, raw, "")
    if cfg.output.name is None:
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, name=Path(path).stem if path else "run"))
    check_config(cfg)
    return cfg


class _CliValue(str):
    """A value typed on the command line: parsed according to its field's type."""


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not key=value (e.g. optim.lr=3e-4)")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[leaf] = _CliValue(value)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'{where}' must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}; valid keys of {where}: {', '.join(names)}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        if is_dataclass(hints[name]):
            values[name] = _build(hints[name], raw[name] or {}, f"{prefix}{name}.")
        else:
            values[name] = _coerce(raw[name], hints[name], f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as type `hint`, or a ConfigError naming `key` and the type wanted."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if type(None) in options and (value is None or (isinstance(value, _CliValue) and value.lower() in ("null", "none", ""))):
        return None
    # str last: "[a, b]" is a list where a list is allowed. A bare word counts as a one-item list
    # only where it cannot be read as a str instead.
    lenient = str not in options
    for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is str):
        try:
            return _coerce_one(value, option, lenient)
        except (TypeError, ValueError):
            continue
    raise ConfigError(f"'{key}' must be {type_name(hint)}, got {str(value)!r}")


def _coerce_one(value: Any, hint: Any, lenient: bool = True) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        if str(value) in typing.get_args(hint):
            return str(value)
        raise ValueError(value)
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, _CliValue):
            value = _cli_list(value, args[0] is str, lenient)
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce_one(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(value)
        return tuple(_coerce_one(v, a) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise TypeError(value)
    if hint is int:
        if isinstance(value, bool) or isinstance(value, float):
            raise TypeError(value)
        return int(value)  # str -> int raises ValueError for "1.5" or "abc"
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)  # YAML reads 1e-4 (no dot) as a string; float() takes it
    if hint is str:
        if isinstance(value, (dict, list)):
            raise TypeError(value)
        return str(value)
    raise TypeError(f"unsupported config type {hint}")


def _cli_list(text: str, of_strings: bool, lenient: bool) -> list[Any]:
    """A list typed on the command line: YAML flow style ([a, b]); when lenient, a list of strings
    also takes one bare item (a script such as `[S1] Hi, there.` is not YAML) and other lists a,b."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, list):
        return parsed
    if not lenient:
        raise ValueError(text)
    return [text] if of_strings else [v.strip() for v in text.split(",") if v.strip()]


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def type_name(hint: Any) -> str:
    """A field type as the help text shows it: int, float, one of a|b, list of str, ..."""
    if _is_union(hint):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + "|".join(typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    return getattr(hint, "__name__", str(hint))


# --- writing and documenting -------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples as lists); `load` of its dump gives it back."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {
        f.name: config_to_dict(getattr(cfg, f.name)) if is_dataclass(getattr(cfg, f.name)) else plain(getattr(cfg, f.name))
        for f in fields(cfg)
    }


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    return path


def help_text(width: int = 100) -> str:
    """Every config key with its type, default and doc: the trainer's --help."""
    lines = []
    sections = [("", TrainConfig)] + [(name, cls) for name, cls in SECTIONS.items()]
    for name, cls in sections:
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        lines.append(f"{name or 'top level'}: {inspect.cleandoc(cls.__doc__ or '').splitlines()[0]}")
        for f in fields(cls):
            if is_dataclass(hints[f.name]):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = list(default) if isinstance(default, tuple) else default
            key = f"{name}.{f.name}" if name else f.name
            lines.append(f"  {key} ({type_name(hints[f.name])}, default {shown!r})")
            lines += textwrap.wrap(docs.get(f.name, ""), width, initial_indent=" " * 6, subsequent_indent=" " * 6)
        lines.append("")
    return "\n".join(lines)
