"""Where a model's files are: a local folder or a Hub repo, and its `dia2_assets.json` manifest.

A model repo holds `config.json` and `model.safetensors` (spec section 1). An optional manifest
`{config, weights, tokenizer, mimi}` names other files or repos; its file name may be changed
with the environment variable DIA2_ASSET_MANIFEST. Hub files come through `huggingface_hub`, so
its cache serves them when offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dia2.errors import Dia2Error

logger = logging.getLogger(__name__)

MANIFEST_ENV = "DIA2_ASSET_MANIFEST"
DEFAULT_MANIFEST = "dia2_assets.json"
DEFAULT_MODEL = "nari-labs/Dia2-2B"
"""The model every entry point loads when none is named."""
TINY_MODEL = "tiny"
"""The model source naming the embedded tiny demo model (`dia2.tiny`), wherever a model is
named: `Dia2.from_repo("tiny")`, `--model tiny` on every command (`dia2.launch`), the trainer's
`model.base=tiny`. A local folder called tiny is passed as `./tiny`. `dia2.tiny.model_source`
resolves it (it builds the bundle, with this module's helpers); `ModelSource.resolve` does not."""


# One part of a Hub repo id (the Hub's rules): ASCII letters, digits, '_', '-' and '.', beginning
# and ending with a letter, digit or '_', with no '--' or '..'.
_HUB_PART = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_HUB_NAME_LENGTH = 96


def hub_repo_id_problem(repo: str) -> str | None:
    """What makes `repo` an invalid Hub repo id (owner/name, the Hub's character rules), or None."""
    parts = repo.split("/")
    if len(parts) != 2:
        return "a Hub repo id is owner/name, e.g. me/my-voice-lora"
    for part in parts:
        if not _HUB_PART.fullmatch(part) or "--" in part or ".." in part:
            return (f"'{part}' breaks the Hub's rules for names: ASCII letters, digits, '_', '-' and '.', beginning and "
                    "ending with a letter or digit, no '--' or '..'")
    if len(parts[1]) > _HUB_NAME_LENGTH or parts[1].endswith(".git"):
        return f"the name may have at most {_HUB_NAME_LENGTH} characters and may not end in .git"
    return None


class AssetError(Dia2Error, FileNotFoundError):
    """A model file that cannot be found or fetched; the message says what to do."""


HUB_TIMEOUT_S = 20.0
"""Seconds a server waits for the Hub to deliver a file a request needs (an adapter voice's)
before it answers that the Hub timed out (the download goes on in the background)."""


class HubUnreachable(AssetError):
    """A file not cached that the Hub could not be asked for (no network, or offline mode)."""


@dataclass(frozen=True)
class AssetManifest:
    """File names inside the model repo (config, weights) and repos/paths of other assets."""

    config: str = "config.json"
    weights: str = "model.safetensors"
    tokenizer: str | None = None
    mimi: str | None = None

    @classmethod
    def parse(cls, raw: object, source: str) -> "AssetManifest":
        if not isinstance(raw, dict):
            raise AssetError(f"{source} must be a JSON object with keys config/weights/tokenizer/mimi")
        values = {}
        for key in ("config", "weights", "tokenizer", "mimi"):
            value = raw.get(key)
            if value is not None and not isinstance(value, str):
                raise AssetError(f"{source}: '{key}' must be a string, got {value!r}")
            if value:
                values[key] = value
        return cls(**values)


def default_cache() -> Path:
    """Where dia2 keeps what it builds once (the tiny demo bundle, the assembled offline Whisper):
    $DIA2_CACHE, else ~/.cache/dia2."""
    return Path(os.environ.get("DIA2_CACHE") or Path.home() / ".cache" / "dia2")


def manifest_name() -> str:
    return os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST


@dataclass(frozen=True)
class ModelSource:
    """A resolved model location: a local folder, or a Hub repo (files fetched on demand).

    `name` is what records (adapter configs, model cards, voice files) call the model: the Hub
    repo id, `tiny`, or a local folder's own name - never a path of this machine.
    """

    location: str
    is_local: bool
    revision: str | None = None
    cache_dir: str | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", Path(self.location).resolve().name if self.is_local else self.location)

    @classmethod
    def resolve(cls, repo_or_dir: str | os.PathLike, revision: str | None = None, cache_dir: str | None = None) -> "ModelSource":
        """A local folder or a Hub repo id (checked for form only; nothing is fetched). The name
        `tiny` is resolved one layer up, by `dia2.tiny.model_source`, which builds that model."""
        text = str(repo_or_dir)
        if text == TINY_MODEL:
            raise AssetError(
                f"'{TINY_MODEL}' names the embedded demo model, which dia2.tiny builds: load it with "
                f"Dia2.from_repo('{TINY_MODEL}'), or find its folder with dia2.tiny.model_source('{TINY_MODEL}')"
            )
        path = Path(repo_or_dir).expanduser()
        if path.is_dir():
            return cls(str(path), True)
        if path.exists():
            raise AssetError(f"{text} is a file; pass the model folder (holding config.json) or a Hub repo id")
        if text.count("/") != 1 or text.startswith((".", "/", "~")):
            raise AssetError(
                f"model '{text}' is neither an existing folder nor a Hub repo id like 'nari-labs/Dia2-2B' "
                f"(or '{TINY_MODEL}', the embedded demo model)"
            )
        return cls(text, False, revision, cache_dir)

    def file(self, name: str, required: bool = True) -> Path | None:
        """Local path of file `name` of this model (downloaded or taken from the cache)."""
        if self.is_local:
            path = Path(self.location) / name
            if path.is_file():
                return path
            if required:
                raise AssetError(f"{path} not found: the model folder {self.location} lacks '{name}'")
            return None
        return _hub_file(self.location, name, self.revision, self.cache_dir, required)

    def asset(self, name: str | None) -> str | None:
        """A manifest asset (tokenizer, mimi): a folder inside a local model repo, else the repo id
        or path as written; None when the manifest names none."""
        if not name:
            return None
        if self.is_local and (Path(self.location) / name).is_dir():
            return str(Path(self.location) / name)
        return name

    def manifest(self) -> AssetManifest:
        name = manifest_name()
        path = self.file(name, required=name != DEFAULT_MANIFEST)
        if path is None:
            return AssetManifest()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AssetError(f"{path} is not valid JSON ({exc}); fix or remove the manifest") from exc
        return AssetManifest.parse(raw, str(path))


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face Hub cannot be reached from here, or None. Checked once per process, by
    one connection (not with HF_HUB_OFFLINE set, nor through a proxy, which is the way out then).

    Unreachable, the process works from the local cache from then on, in every library (the
    tokenizer's and the codec's loads too), as with HF_HUB_OFFLINE=1: the Hub client would
    otherwise retry each file five times with a warning each, for about a minute, before failing.
    """
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=constants.HF_HUB_ETAG_TIMEOUT).close()
    except OSError as exc:
        constants.HF_HUB_OFFLINE = True
        reason = f"{url.hostname}: {exc.strerror or exc}"
        logger.info("the Hugging Face Hub cannot be reached (%s): using the local cache", reason)
        return reason
    return None


def _hub_file(repo_id: str, name: str, revision: str | None, cache_dir: str | None, required: bool) -> Path | None:
    from huggingface_hub import errors as hub_errors
    from huggingface_hub import hf_hub_download

    unreachable = hub_unreachable()
    try:
        return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir))
    except hub_errors.LocalEntryNotFoundError as exc:
        if not required:
            # Offline with no cached copy: an optional file (the manifest) is simply absent.
            return None
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        if unreachable:
            hint = (f"the Hub cannot be reached ({unreachable}) and the file is not in the local cache: check the "
                    "network, or pass a local folder")
        elif offline:
            hint = ("HF_HUB_OFFLINE is set and the file is not in the local cache: unset it to download, or run "
                    f"`hf download {repo_id}` on a machine with network access and copy the cache")
        else:
            hint = "the Hub could not be reached and the file is not cached: check the network, or pass a local folder"
        raise HubUnreachable(f"cannot get '{name}' of {repo_id}: {hint}") from exc
    except (hub_errors.RemoteEntryNotFoundError, hub_errors.EntryNotFoundError) as exc:
        if not required:
            return None
        raise AssetError(f"{repo_id} has no file '{name}' (revision {revision or 'main'})") from exc
    except hub_errors.RepositoryNotFoundError as exc:
        raise AssetError(f"Hub repo {repo_id} not found, or private: check the id or log in (`hf auth login`)") from exc
    except hub_errors.RevisionNotFoundError as exc:
        raise AssetError(f"revision '{revision}' of {repo_id} not found") from exc
