"""The one studio of a test session (`dia2.studio.app` on the tiny model, a short frame limit and the
shipped tiny.en Whisper), shared by the gradio_client tests and the browser tests."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "audio"


@dataclass
class LiveStudio:
    url: str
    demo: object
    voices: Path
    work: Path

    @property
    def studio(self):
        return self.demo.studio

    def client(self):
        """A gradio_client on the studio."""
        from gradio_client import Client

        return Client(self.url, verbose=False)


_LIVE: dict[str, LiveStudio] = {}


def live_studio(request, tmp_path_factory, bundle: Path, whisper: str) -> LiveStudio:
    """The one studio of this test session, started on first use and closed at the session's end."""
    if "studio" in _LIVE:
        return _LIVE["studio"]
    from dia2.studio.app import build_app, build_parser, launch, parse_options

    root = tmp_path_factory.mktemp("studio")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["--hf", str(bundle), "--device", "cpu", "--voices", str(root / "voices"), "--work", str(root / "work"),
            "--whisper-model", whisper, "--max-frames", "40", "--slots", "4", "--port", str(port)]
    options = parse_options(build_parser(), argv)
    demo = build_app(options, scorer=studio_scorer(whisper))
    launch(demo, options, prevent_thread_lock=True)
    _LIVE["studio"] = LiveStudio(f"http://127.0.0.1:{port}/", demo, root / "voices", root / "work")

    def close() -> None:
        demo.close()
        demo.studio.engine.stop()

    request.config.add_cleanup(close)
    return _LIVE["studio"]


def studio_scorer(whisper: str):
    """The evaluation's clip scorer with the shipped tiny.en Whisper and no speaker encoder (None
    while dia2.evaluation does not exist: Compare then shows outputs without scores)."""
    try:
        from dia2.evaluation import ClipScorer
    except ImportError:
        return None
    return lambda references: ClipScorer(list(references) or None, asr=whisper, speaker=None)


def split_longest_word(words: list[str]) -> tuple[int, list[str]]:
    """(index of the longest heard word, the words with it typed as two), e.g. today -> to day?"""
    from dia2.text.transcript import comparable

    k = max(range(len(words)), key=lambda i: len(comparable(words[i])))
    assert len(comparable(words[k])) >= 4, words
    return k, [*words[:k], words[k][:2], words[k][2:], *words[k + 1:]]
