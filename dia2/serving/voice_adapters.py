"""Adapter voices on the serving engine: which loaded engine adapter serves each stored voice.

A voice's adapter is loaded into the engine under a fresh name per stored revision of the voice,
so replacing a voice (here, or through another server sharing the voices folder) loads the new
adapter beside the old one, which is unloaded once no request uses it.

A Hub adapter is fetched with a deadline (`hub_timeout_s`): a Hub that cannot be reached answers
502 and one too slow 504, in OpenAI's error shape, and neither is remembered against the voice (the
next request tries again); an adapter the Hub does not have, or that does not fit the model, is
the client's error (400), or the voice's (503) once stored.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from pathlib import Path

from dia2.errors import Dia2Error
from dia2.model.adapters import resolve_adapter
from dia2.model.assets import HUB_TIMEOUT_S, HubUnreachable
from dia2.serving.engine import Engine
from dia2.serving.requests import EngineError
from dia2.serving.voices import StoredVoice, VoiceError, VoiceStore

logger = logging.getLogger(__name__)


class AdapterUnavailable(VoiceError):
    """A stored voice whose adapter could not be loaded into the engine; its message says why."""

    status = 503


class HubFetchFailed(VoiceError):
    """An adapter that is not cached, and the Hub could not be reached to fetch it."""

    status = 502


class HubFetchTimedOut(VoiceError):
    """An adapter the Hub did not deliver within the server's deadline."""

    status = 504


class VoiceAdapters:
    """Which engine adapter serves each adapter voice, per stored revision of the voice.

    Each load gets a fresh engine name, so a voice's new adapter is loaded (and checked: a bad
    one is refused before anything is stored) while its old one may still be serving requests;
    a replaced or deleted voice's adapter is retired and unloaded once no request uses it. A
    voice added or replaced by another server sharing the voices folder has its adapter loaded
    here at its first request.
    """

    def __init__(self, engine: Engine, hub_timeout_s: float = HUB_TIMEOUT_S) -> None:
        self.engine, self.hub_timeout_s = engine, hub_timeout_s
        self._keys: dict[str, tuple[str | None, str]] = {}  # voice name -> (revision, engine adapter name)
        self._failed: dict[str, tuple[str, str]] = {}  # voice name -> (revision, why its adapter did not load)
        self._retired: list[str] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: two requests for a new voice load it once

    def load(self, adapter: str) -> str:
        """Load an adapter under a fresh engine name; AdapterError if it cannot serve this model,
        HubFetchFailed or HubFetchTimedOut if the Hub cannot deliver it."""
        folder = self._fetch(adapter)
        key = f"voice-adapter-{next(self._numbers)}"
        self.engine.load_adapter(key, str(folder))
        return key

    def _fetch(self, adapter: str) -> Path:
        """The adapter's local folder (a Hub repo is downloaded to the cache), within the deadline.
        A fetch past it goes on in the background: the next try finds the files cached."""
        result: queue.Queue[Path | BaseException] = queue.Queue(maxsize=1)

        def fetch() -> None:
            try:
                result.put(resolve_adapter(adapter))
            except BaseException as exc:  # handed to the waiting request, which raises it
                result.put(exc)

        threading.Thread(target=fetch, daemon=True, name="dia2-adapter-fetch").start()
        try:
            got = result.get(timeout=self.hub_timeout_s)
        except queue.Empty:
            raise HubFetchTimedOut(
                f"the Hugging Face Hub did not deliver adapter '{adapter}' within {self.hub_timeout_s:g} s: try again "
                "in a while (the download goes on), or ask the operator to raise --hub-timeout", param="adapter"
            ) from None
        if isinstance(got, BaseException):
            if isinstance(got.__cause__, HubUnreachable):
                raise HubFetchFailed(f"the server cannot reach the Hugging Face Hub for adapter '{adapter}': {got}",
                                     param="adapter") from got
            raise got
        return got

    def retire(self, key: str) -> None:
        """Unload an engine adapter once no request uses it."""
        with self._lock:
            self._retired.append(key)
            self._sweep()

    def bind(self, name: str, key: str | None, revision: str | None = None) -> None:
        """Voice `name` (at `revision`; None: at any revision, until it is replaced or deleted
        through this store) is now served by `key` (None: by no adapter)."""
        with self._lock:
            old = self._keys.pop(name, None)
            self._failed.pop(name, None)
            if key is not None:
                self._keys[name] = (revision, key)
            if old is not None and old[1] != key:
                self._retired.append(old[1])
            self._sweep()

    def fail(self, stored: StoredVoice, reason: str) -> None:
        with self._lock:
            self._failed[stored.name] = (stored.revision, reason)

    def changed(self, name: str, stored: StoredVoice | None) -> None:
        """The voice store's listener: a voice replaced (by this server or another) or deleted
        retires the adapter of its former revision."""
        with self._lock:
            bound = self._keys.get(name)
            if bound is not None and (stored is None or bound[0] not in (None, stored.revision)):
                self._retired.append(self._keys.pop(name)[1])
            failed = self._failed.get(name)
            if failed is not None and (stored is None or failed[0] != stored.revision):
                del self._failed[name]
            self._sweep()

    def key(self, stored: StoredVoice) -> str | None:
        """The engine adapter of a voice (None without one), loaded now if this server has not
        loaded that revision yet; 503 if it fails to load."""
        if stored.adapter is None:
            return None
        key = self._bound(stored)
        if key is not None:
            return key
        with self._loading:
            key = self._bound(stored)  # loaded by another request while this one waited
            if key is None:
                try:
                    key = self.load(stored.adapter)
                except (HubFetchFailed, HubFetchTimedOut):
                    raise  # the Hub may deliver it next time: not remembered as the voice's failure
                except Dia2Error as exc:
                    logger.error("voice '%s': its adapter %s could not be loaded: %s", stored.name, stored.adapter, exc)
                    self.fail(stored, str(exc))
                    return self._bound(stored)  # raises the 503
                self.bind(stored.name, key, stored.revision)
        return key

    def _bound(self, stored: StoredVoice) -> str | None:
        with self._lock:
            failed = self._failed.get(stored.name)
            if failed is not None and failed[0] == stored.revision:
                raise AdapterUnavailable(
                    f"voice '{stored.name}': its adapter could not be loaded ({failed[1]}); replace the voice "
                    "(POST /v1/voices with replace=true) or fix the adapter and restart"
                )
            bound = self._keys.get(stored.name)
            return bound[1] if bound is not None and bound[0] in (None, stored.revision) else None

    def _sweep(self) -> None:
        for key in list(self._retired):
            try:
                self.engine.unload_adapter(key)
                self._retired.remove(key)
            except EngineError:
                pass  # still serving a request: unloaded at a later sweep


def load_stored_adapters(voices: VoiceStore, adapters: VoiceAdapters) -> None:
    """At start: load every stored voice's adapter; one that fails is logged, and its voice
    answers 503 saying why, while the others serve."""
    for stored in voices.list():
        if stored.adapter is None:
            continue
        try:
            adapters.bind(stored.name, adapters.load(stored.adapter), stored.revision)
        except (HubFetchFailed, HubFetchTimedOut) as exc:
            logger.warning("voice '%s': its adapter is fetched at its first request instead: %s", stored.name, exc)
        except Dia2Error as exc:
            logger.error("voice '%s': its adapter %s could not be loaded: %s", stored.name, stored.adapter, exc)
            adapters.fail(stored, str(exc))
