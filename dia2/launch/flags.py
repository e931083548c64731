"""Flag spellings every command shares, and the checks of flags several commands take: the port,
and repeatable `NAME=VALUE` flags (`--adapter NAME=PATH`, `--voice-alias OPENAI_NAME=VOICE`).
Imports no model stack."""

from __future__ import annotations

from collections.abc import Sequence

from dia2.model.adapter_files import AdapterError, check_adapter_path
from dia2.options import OptionError

MODEL_FLAG = "--model"
"""The one spelling of the model source on every command (the trainer's model.base)."""
FLAG_ALIASES = {MODEL_FLAG: ("--hf",), "--cfg": ("--cfg-scale",)}
"""Other spellings a flag answers to, shown in --help beside it: --hf is the published CLI's
spelling of --model; --cfg-scale the field name of --cfg."""
PUBLISHED_SPELLING = {
    "cfg_scale": "--cfg",
    "audio.temperature": "--temperature",
    "audio.top_k": "--topk",
    "text.top_k": "--text-topk",
}
"""GenerationConfig keys whose flags keep the published CLI's names; the others are the field names."""
SERVED_MODEL_SPELLING = {"adapter": "--merge-adapter", "unmerged_adapter": "--keep-merge-adapter-unmerged"}
"""ModelOptions flags of a command whose engine applies adapters per request (the server, the
studio): there --adapter NAME=PATH offers one, and the model's own adapter is --merge-adapter."""
SERVED_SECTION_SPELLINGS = {"model": SERVED_MODEL_SPELLING, "generation": PUBLISHED_SPELLING}
"""`add_section_flags`' spellings for the options of a command that serves (the server, the studio)."""


def check_port(port: int) -> None:
    """Refuse a --port no socket can listen on."""
    if not 0 < port < 65536:
        raise OptionError(f"--port {port}: use 1-65535")


def named_items(items: Sequence[str], flag: str, form: str, example: str) -> list[tuple[str, str]]:
    """(name, value) of each `NAME=VALUE` item of a repeatable flag; an item without both halves
    is refused with the flag's form and an example (`form` e.g. NAME=PATH, `example` a=b)."""
    pairs = []
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value:
            raise OptionError(f"{flag} {item!r}: write {form}, e.g. {flag} {example}")
        pairs.append((name, value))
    return pairs


def adapter_items(items: Sequence[str]) -> list[tuple[str, str]]:
    """(name, path or repo) of each `--adapter NAME=PATH_OR_REPO`, refused before anything loads
    when malformed or naming a missing or incomplete local folder (a Hub repo id is checked when
    it is fetched)."""
    pairs = named_items(items, "--adapter", "NAME=PATH", "my-voice=runs/voice/adapter")
    for name, value in pairs:
        try:
            check_adapter_path(value, f"--adapter {name}=")
        except AdapterError as exc:
            raise OptionError(str(exc)) from None
    return pairs


def join_repeated(argv: Sequence[str], flags: tuple[str, ...]) -> list[str]:
    """`--adapter a=x --adapter b=y` -> `--adapter a=x,b=y` (the options module keeps the last value)."""
    out, seen = [], {}
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        flag, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in flags:
            if not eq:
                if i + 1 >= len(argv):
                    out.append(arg)
                    continue
                value = argv[i + 1]
                next(it, None)
            if flag in seen:
                out[seen[flag]] += "," + value
            else:
                seen[flag] = len(out) + 1
                out += [flag, value]
            continue
        out.append(arg)
    return out
