"""A voice: what Dia2 speaks with, in one folder format that every entry point reads and writes.

A `Voice` is the product's unit: a prefix (`dia2.generation.prefix.VoicePrefix`: recorded speech
and its timed words, which the model continues) and/or a LoRA adapter (a plain PEFT folder or a
Hub repo id), plus default sampling settings (`VoiceDefaults`: seed, CFG, temperature, top-k)
that a take uses unless it sets its own. `dia2-infer --voice` / `--save-voice`, `dia2-eval
--voice`, the speech server's and the studio's voices folder, a finished training run and
`finetune.push` all read and write it through one pair of functions, `read_voice(folder)` and
`write_voice(voice, folder)`.

A voice folder (format "dia2-voice/2"):

    voice.json   {"format": "dia2-voice/2",
                  "prefix": null, or {"codec_fingerprint", "speaker_2_frame",
                                      "words": [{"text", "start", "end", "speaker", "probability"}]},
                  "transcript": what the recordings say, as given (null: the prefix's words),
                  "adapter": null, "." (this folder is the PEFT adapter), a local folder, or a Hub repo id,
                  "defaults": {"seed", "cfg", "temperature", "top_k"} (null: unset),
                  "created": when the voice was made (ISO 8601, UTC),
                  "run": null, or the record of the training run that made the adapter
                         (base_model, speakers, corpus, training, samples, license, consent)}
    codes.npy    the prefix's Mimi codes [K, P] (int16), when it has a prefix
    adapter_config.json + adapter_model.safetensors   PEFT's own files, when "adapter" is "."
    speaker_1.<ext>, speaker_2.<ext>, transcript.txt   the recordings as received (server, studio)

Why it is shaped so:
- An adapter stays a plain PEFT folder; there is no second adapter format. A voice refers to one
  (a folder or a Hub repo id) or is one: a finished run's `adapter/` folder holds a voice.json
  whose adapter is "." and whose "run" is the training record, so `dia2-infer --voice
  runs/me/adapter`, the server (the folder dropped into its voices folder, or `--adapter
  NAME=PATH`), the studio and `finetune.push` all take the same folder. Any PEFT LoRA folder
  without a voice.json reads as a voice too: that adapter, no prefix, no defaults.
- The prefix's codes stay binary beside the JSON (codes.npy), its words in the JSON, so a server
  never transcribes a stored voice again (Whisper may hear a word differently another time).
- One precedence everywhere (`VoiceDefaults.over`): a request's field or a command's flag wins
  over the voice's default, which wins over the entry point's own defaults.
- OpenAI's voice names are not folders: the speech server maps each to a builtin voice (no prefix,
  no adapter, a fixed seed; `dia2.serving.voices`).
- Layouts written before this format still read (writes always use this one):
  * `dia2-infer --save-voice` folders: voice.json without a format tag, holding the prefix alone
    ({"codec_fingerprint", "speaker_2_frame", "words"}), and codes.npy;
  * the speech server's voice folders: meta.json ({"adapter", "seed", "cfg", "temperature",
    "top_k", "speakers", "transcript", "created"}), plus that voice.json and codes.npy when the
    voice had a prefix;
  * a training run's adapter folder: the PEFT files and dia2_voice.json ("format":
    "dia2-voice/1", the run's record): an adapter voice whose adapter is the folder itself.
- Reading imports torch only for a prefix's codes: `finetune.push` checks a run without torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dia2.errors import Dia2Error
from dia2.text.words import SpokenWord

if TYPE_CHECKING:
    from dia2.generation.config import GenerationConfig
    from dia2.generation.prefix import VoicePrefix

FORMAT = "dia2-voice/2"
"""The format tag of voice.json."""
RECORD_KEYS = ("format", "prefix", "transcript", "adapter", "defaults", "created", "run")
"""The keys of voice.json in this format (`voice_record` writes each)."""
VOICE_FILE = "voice.json"
CODES_FILE = "codes.npy"
THIS_FOLDER = "."
"""The adapter a voice folder names when it is the PEFT folder itself."""
LEGACY_META = "meta.json"
"""The speech server's voice record before this format (read, never written)."""
LEGACY_RUN_FILE = "dia2_voice.json"
"""A training run's record beside its adapter before this format (read, never written)."""
LEGACY_RUN_FORMAT = "dia2-voice/1"
MAX_SEED = 2**63
"""Seeds are 0 to MAX_SEED - 1 (GenerationConfig's range)."""
_PEFT_CONFIG, _FULL_MODEL = "adapter_config.json", "model.safetensors"


class VoiceError(Dia2Error, ValueError):
    """A voice (folder, setting, upload or name) that cannot be used; the message names the input
    and the fix. `param`: the input at fault as a request names it (a form field, a setting), when
    one is; `status`: the HTTP status the speech server answers it with."""

    status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class VoiceDefaults:
    """A voice's sampling settings (None: not set). The same settings given by a request or a
    command's flags override them; the entry point's defaults fill what neither sets."""

    seed: int | None = None
    """Seed of the sampling: the same seed gives the same audio for the same text."""
    cfg: float | None = None
    """Classifier-free guidance scale (--cfg); 1.0 disables guidance."""
    temperature: float | None = None
    """Audio sampling temperature (--temperature); 0 samples greedily."""
    top_k: int | None = None
    """Audio top-k (--topk); 0 keeps every token."""

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value is not None:
                _check_setting(name, value)
                whole = name in ("seed", "top_k")
                object.__setattr__(self, name, int(value) if whole else float(value))  # 5.0 from JSON is 5

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> VoiceDefaults:
        """The settings a record holds (keys it lacks are unset; other keys are not looked at)."""
        return cls(**{name: record.get(name) for name in cls.fields()})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changed(self, changes: Mapping[str, Any]) -> VoiceDefaults:
        """These settings with `changes` (a field set to None is unset); an unknown key is refused."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise VoiceError(f"{', '.join(unknown)}: not a voice setting; a voice keeps {', '.join(self.fields())}",
                             param=unknown[0])
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, config: GenerationConfig, base: GenerationConfig) -> VoiceDefaults:
        """The settings `config` gives otherwise than `base` (unset where they agree): what a voice
        keeps so that `of(config, base).over(base)` speaks as `config` does."""
        pairs = {"seed": (config.seed, base.seed), "cfg": (config.cfg_scale, base.cfg_scale),
                 "temperature": (config.audio.temperature, base.audio.temperature),
                 "top_k": (config.audio.top_k, base.audio.top_k)}
        return cls(**{name: mine if mine != theirs else None for name, (mine, theirs) in pairs.items()})

    def over(self, config: GenerationConfig) -> GenerationConfig:
        """`config` with the settings that are set here in place of its own."""
        audio = config.audio
        if self.temperature is not None:
            audio = dataclasses.replace(audio, temperature=self.temperature)
        if self.top_k is not None:
            audio = dataclasses.replace(audio, top_k=self.top_k)
        return dataclasses.replace(
            config, audio=audio, cfg_scale=config.cfg_scale if self.cfg is None else self.cfg,
            seed=config.seed if self.seed is None else self.seed,
        )


def _check_setting(name: str, value: Any) -> None:
    """VoiceError naming the setting, its value and its range, unless the value is in range."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if name in ("seed", "top_k"):
        if not number or float(value) != int(value):
            raise VoiceError(f"{name} {value!r} is not a whole number", param=name)
        if name == "seed" and not 0 <= value < MAX_SEED:
            raise VoiceError(f"seed {value} is out of range: give 0 to 2**63 - 1", param=name)
        if name == "top_k" and value < 0:
            raise VoiceError(f"top_k {value} is negative: give 0 (keep every token) or more", param=name)
        return
    if not number or not math.isfinite(value):
        raise VoiceError(f"{name} {value!r} is not a number", param=name)
    if name == "cfg" and value <= 0:
        raise VoiceError(f"cfg {value} must be above 0 (1.0 disables guidance)", param=name)
    if name == "temperature" and value < 0:
        raise VoiceError(f"temperature {value} is negative: give 0 (greedy) or more", param=name)


@dataclass(frozen=True)
class Voice:
    """What Dia2 speaks with: a prefix and/or an adapter, and default sampling settings. A voice
    with neither prefix nor adapter is the base model's voice at its defaults (e.g. a fixed seed)."""

    prefix: VoicePrefix | None = None
    """Recorded speech the model continues (codes [K, P] and timed words)."""
    adapter: str | None = None
    """A PEFT LoRA adapter: a local folder (absolute path) or a Hub repo id."""
    defaults: VoiceDefaults = field(default_factory=VoiceDefaults)
    """Sampling settings a take uses unless it sets its own."""
    transcript: str | None = None
    """What the prefix recordings say, as given when the voice was made (None: the heard words)."""
    created: str | None = None
    """When the voice was made (ISO 8601, UTC; None when not recorded)."""
    run: Mapping[str, Any] | None = None
    """The record of the training run that made the adapter (base_model, speakers, corpus,
    training, samples, license, consent), when the voice came from one."""

    @property
    def speakers(self) -> int:
        """Recordings in the prefix: 0 without one, 2 for a dialogue, else 1."""
        if self.prefix is None:
            return 0
        return 2 if self.prefix.speaker_2_frame is not None else len({w.speaker for w in self.prefix.words})

    @property
    def text(self) -> str:
        """What the prefix says: the transcript given, else its words ("" without a prefix)."""
        if self.transcript:
            return self.transcript
        return " ".join(w.text for w in self.prefix.words) if self.prefix is not None else ""


def created_now() -> str:
    """A voice's `created` stamp for now."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- the folder: one writer, one reader --------------------------------------------------------


def write_voice(voice: Voice, folder: str | os.PathLike) -> Path:
    """Write `voice` to `folder` (created if missing) in the one format: codes.npy (with a
    prefix), then voice.json, replaced whole (a reader sees the old file or the new one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if voice.prefix is not None:
        np.save(folder / CODES_FILE, voice.prefix.codes.cpu().numpy().astype(np.int16))
    text = json.dumps(voice_record(voice, folder), indent=1) + "\n"
    staged = folder / f".{VOICE_FILE}.{os.getpid()}.tmp"
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, folder / VOICE_FILE)
    return folder


def voice_record(voice: Voice, folder: str | os.PathLike) -> dict[str, Any]:
    """The content of voice.json for `voice` stored in `folder` (`write_voice` writes it; the
    speech server rewrites it in place when a voice's defaults change)."""
    prefix = voice.prefix
    return {
        "format": FORMAT,
        "prefix": None if prefix is None else {
            "codec_fingerprint": prefix.codec_fingerprint,
            "speaker_2_frame": prefix.speaker_2_frame,
            "words": [dataclasses.asdict(w) for w in prefix.words],
        },
        "transcript": voice.transcript,
        "adapter": _adapter_reference(voice.adapter, Path(folder)),
        "defaults": voice.defaults.as_dict(),
        "created": voice.created,
        "run": dict(voice.run) if voice.run is not None else None,
    }


def read_voice(folder: str | os.PathLike) -> Voice:
    """The voice in `folder`, in the one format or any layout written before it (see the module
    doc); VoiceError naming the folder and the fix for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VoiceError(f"{folder}: no such voice folder" if not folder.exists() else
                         f"{folder} is a file: give a voice folder (it holds {VOICE_FILE})")
    if (folder / _FULL_MODEL).is_file():
        raise VoiceError(f"{folder} holds a whole model ({_FULL_MODEL}: a full fine-tune or a merged export), not a "
                         "voice: load it as the model (dia2-infer --hf FOLDER)")
    path = folder / VOICE_FILE
    record = _read_json(path) if path.is_file() else None
    if record is not None and record.get("format") == FORMAT:
        return _from_record(record, folder, str(path))
    if record is not None and "format" in record:
        raise VoiceError(f"{path}: format {record['format']!r} is not one this dia2-toolkit reads ({FORMAT}): "
                         "upgrade dia2-toolkit, or make the voice again")
    if (folder / LEGACY_META).is_file():
        return _from_server_folder(folder, record)
    if record is not None:
        return Voice(prefix=_read_prefix(record, folder, str(path)))  # dia2-infer --save-voice, before tags
    if (folder / LEGACY_RUN_FILE).is_file() or (folder / _PEFT_CONFIG).is_file():
        return _from_adapter_folder(folder)
    hint = (f"it is a training run folder: pass its adapter folder, {folder / 'adapter'}"
            if (folder / "adapter" / _PEFT_CONFIG).is_file() else
            "make one with dia2-infer --prefix-speaker-1 ... --save-voice, or train one (finetune/train.py)")
    raise VoiceError(f"{folder} is not a stored voice folder (no {VOICE_FILE}): {hint}")


def voice_file(folder: str | os.PathLike) -> Path | None:
    """The file that describes the voice in `folder` (voice.json, or an older layout's record),
    None when it has none."""
    for name in (VOICE_FILE, LEGACY_META, LEGACY_RUN_FILE):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def _from_record(record: dict[str, Any], folder: Path, where: str) -> Voice:
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        # A misspelt key would silently drop what it holds (an adapter, the defaults).
        raise VoiceError(f"{where}: unknown key {', '.join(map(repr, unknown))}; voice.json holds "
                         f"{', '.join(RECORD_KEYS)}: correct it or remove it")
    prefix = record.get("prefix")
    if prefix is not None and not isinstance(prefix, dict):
        raise VoiceError(f"{where}: 'prefix' must be null or an object, got {prefix!r}: make the voice again")
    run = record.get("run")
    if run is not None and not isinstance(run, dict):
        raise VoiceError(f"{where}: 'run' must be null or an object, got {run!r}: correct it or remove it")
    defaults = record.get("defaults") or {}
    misspelt = sorted(set(defaults) - set(VoiceDefaults.fields())) if isinstance(defaults, Mapping) else []
    if misspelt:
        raise VoiceError(f"{where}: defaults: {', '.join(map(repr, misspelt))} is not a voice setting; a voice keeps "
                         f"{', '.join(VoiceDefaults.fields())}: correct it or remove it", param=misspelt[0])
    return Voice(
        prefix=_read_prefix(prefix, folder, where) if prefix is not None else None,
        adapter=_adapter_path(record.get("adapter"), folder, where),
        defaults=_defaults(defaults, where),
        transcript=_optional_text(record, "transcript", where),
        created=_optional_text(record, "created", where),
        run=run,
    )


def _from_server_folder(folder: Path, prefix: dict[str, Any] | None) -> Voice:
    """A speech server's voice folder from before the format: meta.json (+ the prefix's voice.json)."""
    where = str(folder / LEGACY_META)
    meta = _read_json(folder / LEGACY_META)
    return Voice(
        prefix=_read_prefix(prefix, folder, str(folder / VOICE_FILE)) if prefix is not None else None,
        adapter=_adapter_path(meta.get("adapter"), folder, where),
        defaults=_defaults(meta, where),
        transcript=_optional_text(meta, "transcript", where),
        created=_optional_text(meta, "created", where),
    )


def _from_adapter_folder(folder: Path) -> Voice:
    """A PEFT adapter folder without voice.json (a run's from before the format, with its record in
    dia2_voice.json, or any other): a voice whose adapter is the folder itself."""
    if not (folder / _PEFT_CONFIG).is_file():
        raise VoiceError(f"{folder} has a run record ({LEGACY_RUN_FILE}) but no adapter ({_PEFT_CONFIG}): a full "
                         "fine-tune's model folder is loaded as the model (dia2-infer --hf FOLDER)")
    run = None
    if (folder / LEGACY_RUN_FILE).is_file():
        run = {k: v for k, v in _read_json(folder / LEGACY_RUN_FILE).items() if k != "format"}
    return Voice(adapter=str(folder.resolve()), run=run)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VoiceError(f"{path} cannot be read as JSON ({exc}): make the voice again") from exc
    if not isinstance(record, dict):
        raise VoiceError(f"{path} must hold a JSON object, got {type(record).__name__}: make the voice again")
    return record


def _read_prefix(record: dict[str, Any], folder: Path, where: str) -> VoicePrefix:
    """The prefix a record describes, its codes from codes.npy; words stored before probabilities
    were kept read as probability 1.0."""
    import torch

    from dia2.generation.prefix import PrefixError, VoicePrefix

    words = _read_words(record.get("words"), where)
    prefix = VoicePrefix(torch.from_numpy(_read_codes(folder / CODES_FILE)), words,
                         record.get("codec_fingerprint"), record.get("speaker_2_frame"))
    try:
        prefix.check_speaker_2_frame(where)
    except PrefixError as exc:
        raise VoiceError(str(exc)) from None
    return prefix


def _read_codes(path: Path) -> np.ndarray:
    """A prefix's codes [K, P] as int64, from codes.npy; VoiceError naming the file otherwise."""
    again = "make the voice again (dia2-infer --prefix-speaker-1 ... --save-voice, or a server upload)"
    if not path.is_file():
        raise VoiceError(f"{path} is missing: a voice with a prefix keeps its codes there, beside {VOICE_FILE}; "
                         f"copy the whole voice folder, or {again}")
    try:
        codes = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise VoiceError(f"{path} cannot be read as the prefix's codes ({exc}): {again}") from exc
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer) or codes.shape[1] == 0:
        raise VoiceError(f"{path} holds {codes.dtype} of shape {tuple(codes.shape)}; a prefix's codes are whole "
                         f"numbers [codebooks, frames]: {again}")
    if codes.size and codes.min() < 0:
        raise VoiceError(f"{path} holds negative codes; Mimi codes are 0 or more: {again}")
    return codes.astype(np.int64)


_WORD_FIELDS = tuple(f.name for f in dataclasses.fields(SpokenWord))


def _read_words(raw: Any, where: str) -> tuple[SpokenWord, ...]:
    """The prefix's timed words, each checked; VoiceError naming the word and the file otherwise."""
    again = "make the voice again"
    if not isinstance(raw, list) or not raw:
        raise VoiceError(f"{where}: the prefix has no words (its 'words' is {raw!r}); a prefix needs the timed "
                         f"words its recording says: {again}")
    words = []
    for i, item in enumerate(raw, 1):
        problem = _word_problem(item)
        if problem:
            raise VoiceError(f"{where}: prefix word {i} ({item!r}) {problem}; each word is an object of "
                             f"{', '.join(_WORD_FIELDS)}: {again}")
        words.append(SpokenWord(**item))
    return tuple(words)


def _word_problem(item: Any) -> str | None:
    """What is wrong with one stored word, or None."""
    if not isinstance(item, dict):
        return "is not an object"
    missing = [k for k in ("text", "start", "end") if k not in item]
    unknown = sorted(set(item) - set(_WORD_FIELDS))
    if missing or unknown:
        return f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(unknown)}"
    if not isinstance(item["text"], str) or not item["text"].strip():
        return "has no text"
    for key in ("start", "end", "probability"):
        value = item.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"has '{key}' {value!r}, not a number"
    if item["start"] < 0 or item["end"] < item["start"]:
        return "ends before it starts" if item["end"] < item["start"] else "starts before the recording"
    if item.get("speaker", 1) not in (1, 2) or isinstance(item.get("speaker"), bool):
        return f"is spoken by speaker {item.get('speaker')!r}; a prefix has speakers 1 and 2"
    return None


def _defaults(record: Mapping[str, Any], where: str) -> VoiceDefaults:
    if not isinstance(record, Mapping):
        raise VoiceError(f"{where}: 'defaults' must be an object of {', '.join(VoiceDefaults.fields())}: "
                         "correct it or remove it")
    try:
        return VoiceDefaults.from_dict(record)
    except VoiceError as exc:
        raise VoiceError(f"{where}: {exc}: correct it or remove it", param=exc.param) from None


def _optional_text(record: Mapping[str, Any], key: str, where: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise VoiceError(f"{where}: '{key}' must be text or null, got {value!r}: correct it or remove it")
    return value


def _adapter_path(reference: Any, folder: Path, where: str) -> str | None:
    """What a record's adapter names: "." (the folder itself) and "./x" or "../x" are relative to
    the voice folder, an absolute path is a local folder, anything else a Hub repo id (checked
    where it is fetched)."""
    if reference is None:
        return None
    if not isinstance(reference, str) or not reference.strip():
        raise VoiceError(f"{where}: 'adapter' must be null, '.', a folder or a Hub repo id, got {reference!r}: "
                         "correct it")
    if reference == THIS_FOLDER or reference.startswith(("./", "../")):
        return str((folder / reference).resolve())
    return reference


def _adapter_reference(adapter: str | None, folder: Path) -> str | None:
    """How voice.json names `adapter`: "." when it is `folder` itself, an existing local folder by
    its absolute path (never relative to the working folder, which a later reader does not share),
    a Hub repo id as it is. A name is a local folder when one exists there, as when an adapter
    is loaded (`dia2.model.adapter_files.local_adapter`)."""
    if adapter is None:
        return None
    path = Path(adapter).expanduser()
    if not path.exists():
        return adapter
    path = path.resolve()
    return THIS_FOLDER if path == folder.resolve() else str(path)
