"""User options -> frozen configs, one way for every entry point (dia2-infer, dia2-prep, the trainer).

A config is a frozen dataclass whose fields are each documented once, by the string literal
under the field (litgpt-style); nested dataclass fields are sections. From that one definition:

- `add_flags` makes an argparse flag per field (`max_seconds` -> `--max-seconds`, section fields
  `text.top_k` -> `--text-top-k` unless an entry point keeps a published spelling), with the
  field's doc as help and its dataclass default shown, never re-typed; a `FlagParser` answers an
  unknown flag with the closest known one;
- `parse_overrides` reads `section.key=value` items; YAML files give the same nested mapping;
- `build` turns either into the config through one coercion routine (`coerce`: bool, int,
  float, str, Path, Literal, Optional, tuples), refusing unknown keys with the closest match and
  naming the key or flag and the type it wants in every error;
- `help_text` lists every key with its type, default and doc.

Text typed on the command line arrives as `CliValue` and is parsed by its field's type
(`output.name=123` is the string "123", `optim.lr=1e-4` a float); YAML values come typed. A
tuple typed on the command line is a YAML flow list (`[a, b]`) or comma-separated items, except
where the field is marked `SENTENCES` (items such as scripts contain commas): there a bare value
is one item.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, Self

import yaml

from dia2.errors import Dia2Error

SENTENCES = {"items": "sentences"}
"""Field metadata of a tuple of sentences: a bare command-line value is one item, not split at commas."""


class OptionError(Dia2Error, ValueError):
    """An option that cannot be used; the message names the key or flag and the fix."""


class CliValue(str):
    """Text a user typed on the command line, parsed according to its field's type; `given_as` is
    the flag it came with (None for a key=value item), which errors name."""

    given_as: str | None

    def __new__(cls, text: str, given_as: str | None = None) -> Self:
        value = super().__new__(cls, text)
        value.given_as = given_as
        return value


# --- field documentation -----------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in `cls`'s body, whitespace-normalised.

    Raises TypeError naming the fields that have none, so an undocumented option cannot ship.
    """
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(tree, ast.ClassDef), cls
    docs = {}
    for node, after in zip(tree.body, tree.body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    missing = {f.name for f in fields(cls)} - set(docs)
    if missing:
        raise TypeError(f"{cls.__name__} fields without a docstring: {sorted(missing)}")
    return docs


def default_of(f: Field) -> Any:
    """A field's default (its factory called), or MISSING for a required field."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def sections(cls: type) -> dict[str, type]:
    """Name -> dataclass of each nested section of `cls`."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if is_dataclass(hints[f.name])}


def type_name(hint: Any) -> str:
    """A field type as help and errors show it: int, float, one of a|b, list of str, ..."""
    if _is_union(hint):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + "|".join(map(str, typing.get_args(hint)))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    return getattr(hint, "__name__", str(hint))


# --- coercion and building ---------------------------------------------------------------------


def coerce(value: Any, hint: Any, name: str, *, split: bool = True, error: type[OptionError] = OptionError) -> Any:
    """`value` as type `hint`, or `error` naming `name` (a key or flag) and the type wanted.

    split=False: a bare command-line value for a tuple is one item (see `SENTENCES`).
    """
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if type(None) in options and (value is None or _null_word(value, options)):
        return None
    # str last: "[a, b]" is a list where a list is allowed. A bare word is a list only where it
    # cannot be read as a str instead.
    split_bare = str not in options
    for option in sorted((o for o in options if o is not type(None)), key=lambda o: o is str):
        try:
            return _coerce_one(value, option, split_bare, split)
        except (TypeError, ValueError):
            continue
    raise error(f"'{name}' must be {type_name(hint)}, got {str(value)!r}")


def _null_word(value: Any, options: tuple) -> bool:
    """Whether typed text means None: null/none/empty in a key=value item, or given to a flag
    whose field cannot hold text (`--seed none`); `--text none` is the text "none"."""
    if not (isinstance(value, CliValue) and value.lower() in ("null", "none", "")):
        return False
    return value.given_as is None or not any(o in (str, Path) for o in options)


def _coerce_one(value: Any, hint: Any, split_bare: bool = True, split: bool = True) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        for choice in typing.get_args(hint):
            if str(value) == str(choice):
                return choice
        if isinstance(value, bool):
            # YAML reads an unquoted no/off/yes/on as a bool: take the choice it was written as.
            for choice in typing.get_args(hint):
                if str(choice).lower() in (("yes", "on", "true") if value else ("no", "off", "false")):
                    return choice
        raise ValueError(value)
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(hint), split_bare, split)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise TypeError(value)
    if hint is int:
        if isinstance(value, (bool, float)):
            raise TypeError(value)
        return int(value)  # str -> int raises ValueError for "1.5" or "abc"
    if hint is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)  # YAML reads 1e-4 (no dot) as a string; float() takes it
    if hint is str or hint is Path:
        if isinstance(value, (dict, list, tuple, bool)) or value is None:
            raise TypeError(value)
        return hint(value)
    raise TypeError(f"unsupported option type {hint}")


def _coerce_tuple(value: Any, args: tuple, split_bare: bool, split: bool) -> tuple:
    if isinstance(value, CliValue):
        value = _cli_list(value, split_bare, split)
    if not isinstance(value, (list, tuple)):
        raise TypeError(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce_one(v, args[0]) for v in value)
    if len(value) != len(args):
        raise ValueError(value)
    return tuple(_coerce_one(v, a) for v, a in zip(value, args))


def _cli_list(text: str, split_bare: bool, split: bool) -> list[Any]:
    """A list typed on the command line: YAML flow style ([a, b]), else (where a bare value may be
    a list) comma-separated items, or the whole text as one item for sentences."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, list):
        return parsed
    if not split_bare:
        raise ValueError(text)
    return [v.strip() for v in text.split(",") if v.strip()] if split else [text]


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def build(
    cls: type,
    raw: Any,
    *,
    base: Any = None,
    error: type[OptionError] = OptionError,
    _prefix: str = "",
) -> Any:
    """The config `cls` from a nested mapping of values (YAML data, overrides, flags).

    Keys not given keep their value in `base` (default: the dataclass defaults, sections included),
    so overriding `text.top_k` keeps the other fields of that section's default. Errors name a
    value's flag when it came from one, else its dotted key.
    """
    where = _prefix.rstrip(".") or "the config"
    if not isinstance(raw, Mapping):
        raise error(f"'{where}' must be a mapping of keys, got {raw!r}")
    hints, by_name = typing.get_type_hints(cls), {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in by_name:
            close = difflib.get_close_matches(str(key), list(by_name), n=1)
            hint = f" (did you mean '{_prefix}{close[0]}'?)" if close else ""
            raise error(f"unknown config key '{_prefix}{key}'{hint}; valid keys of {where}: {', '.join(by_name)}")
    values = {}
    for name, value in raw.items():
        key, f = f"{_prefix}{name}", by_name[name]
        if is_dataclass(hints[name]):
            section = getattr(base, name) if base is not None else default_of(f)
            section = None if section is MISSING else section
            values[name] = build(hints[name], value or {}, base=section, error=error, _prefix=f"{key}.")
        else:
            label = getattr(value, "given_as", None) or key
            values[name] = coerce(value, hints[name], label, split=f.metadata.get("items") != "sentences", error=error)
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except OptionError:
        raise
    except (TypeError, ValueError) as exc:  # a value check in the dataclass (__post_init__)
        raise error(_naming_flags(str(exc), raw)) from None


def _naming_flags(message: str, raw: Mapping[str, Any]) -> str:
    """A dataclass check's `message` led by the flags, as typed, of the fields it names
    (`--slots 0: EngineConfig.slots must be >= 1, got 0`); key=value items are named already."""
    typed = [f"{value.given_as} {value}" for name, value in raw.items()
             if getattr(value, "given_as", None) and re.search(rf"\b{re.escape(str(name))}\b", message)]
    return f"{', '.join(typed)}: {message}" if typed else message


def parse_overrides(items: Sequence[str], raw: dict[str, Any] | None = None, error: type[OptionError] = OptionError) -> dict[str, Any]:
    """`section.key=value` items merged into the nested mapping `raw` (a new one when None)."""
    raw = {} if raw is None else raw
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise error(f"override '{item}' is not key=value (e.g. optim.lr=3e-4)")
        *parents, leaf = key.strip().split(".")
        node = raw
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise error(f"override '{item}': '{part}' is a value, not a section")
            node = child
        node[leaf] = CliValue(value)
    return raw


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples as lists, paths as text); `build` of it gives it back."""

    def plain(value: Any) -> Any:
        if is_dataclass(value):
            return to_dict(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return {f.name: plain(getattr(cfg, f.name)) for f in fields(cfg)}


# --- command-line flags ------------------------------------------------------------------------


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser that answers an unknown flag with the closest known one."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            known = list(self._option_string_actions)
            hints = []
            for item in unknown:
                close = difflib.get_close_matches(item.partition("=")[0], known, n=1) if item.startswith("--") else []
                hints.append(f"{item} (did you mean {close[0]}?)" if close else item)
            self.error(f"unknown flag(s) {', '.join(hints)}")
        return parsed


def add_section_flags(
    parser: argparse.ArgumentParser,
    options: type,
    *,
    spellings: Mapping[str, Mapping[str, str]] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> argparse.ArgumentParser:
    """A group of flags per section of a command's options (`options`: a frozen dataclass whose
    dataclass fields are its sections), titled by the section's name and its field doc; the flags'
    dests are `section.field`, as `flag_values` and `build` expect. spellings: section name ->
    `add_flags`' spelling for that section."""
    docs = field_docs(options)
    for name, section in sections(options).items():
        add_flags(parser.add_argument_group(name, docs[name]), section, dest=f"{name}.",
                  spelling=(spellings or {}).get(name), aliases=aliases)
    return parser


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    dest: str = "",
    spelling: Mapping[str, str] | None = None,
    aliases: Mapping[str, Sequence[str]] | None = None,
    _flag: str = "",
    _base: Any = None,
    _about: str = "",
) -> None:
    """Add a flag per field of `cls` (sections recursively, their doc leading each field's help).

    dest: prefix of each flag's dest (a section name and a dot), so `flag_values` can nest them.
    spelling: dotted key (below dest) -> flag, for published flags that differ from field names.
    aliases: flag -> other spellings it also answers to (shown in --help beside it).
    A flag not given is absent from the parsed namespace: `build` then keeps the dataclass default.
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in fields(cls):
        key = f"{_flag}{f.name}"
        default = getattr(_base, f.name) if _base is not None else default_of(f)
        doc = f"{_about}: {docs[f.name][:1].lower()}{docs[f.name][1:]}" if _about else docs[f.name]
        if is_dataclass(hints[f.name]):
            add_flags(parser, hints[f.name], dest=dest, spelling=spelling, aliases=aliases, _flag=f"{key}.",
                      _base=default, _about=docs[f.name].rstrip("."))
            continue
        flag = (spelling or {}).get(key) or "--" + key.replace(".", "-").replace("_", "-")
        _add_flag(parser, (flag, *(aliases or {}).get(flag, ())), dest + key, hints[f.name], default, doc)


def _add_flag(parser: Any, flags: tuple[str, ...], dest: str, hint: Any, default: Any, doc: str) -> None:
    doc = doc.replace("%", "%%")  # argparse formats help with %
    if hint is bool:
        if default:
            parser.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{doc} (default: on)")
        else:
            parser.add_argument(*flags, dest=dest, action="store_true", default=argparse.SUPPRESS, help=doc)
        return
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    shown = f"{doc} (default: {default})" if default not in (None, "", MISSING) else doc
    literal = next((a for a in (typing.get_args(hint) if _is_union(hint) else (hint,)) if typing.get_origin(a) is Literal), None)
    choices = [str(c) for c in typing.get_args(literal)] if literal is not None else None
    metavar = None if choices else dest.rpartition(".")[2].upper()
    parser.add_argument(*flags, dest=dest, action=_Typed, choices=choices, metavar=metavar,
                        default=argparse.SUPPRESS, help=shown, required=default is MISSING)


class _Typed(argparse.Action):
    """Keeps a flag's text as a `CliValue` given as the spelling typed (an alias too: errors name it)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, CliValue(values, given_as=option_string))


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as the nested mapping `build` takes: a dotted dest (from `add_flags`)
    becomes a section key; flags not given are absent, so their defaults stay the dataclass's."""
    raw: dict[str, Any] = {}
    for key, value in vars(args).items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def help_text(cls: type, width: int = 100) -> str:
    """Every key of `cls` with its type, default and doc, section by section."""
    lines: list[str] = []
    _help_lines(cls, "", lines, width, None)
    return "\n".join(lines)


def _help_lines(cls: type, prefix: str, lines: list[str], width: int, base: Any) -> None:
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    lines.append(f"{prefix.rstrip('.') or 'top level'}: {inspect.cleandoc(cls.__doc__ or '').splitlines()[0]}")
    defaults = {f.name: getattr(base, f.name) if base is not None else default_of(f) for f in fields(cls)}
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            continue
        default = defaults[f.name]
        shown = list(default) if isinstance(default, tuple) else default
        lines.append(f"  {prefix}{f.name} ({type_name(hints[f.name])}, default {shown!r})")
        lines += textwrap.wrap(docs[f.name], width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines.append("")
    for name, section in sections(cls).items():
        _help_lines(section, f"{prefix}{name}.", lines, width, defaults[name])
