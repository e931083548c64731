"""Shared end-to-end fixtures: a synthetic training corpus (the data-prep model side, the shipped
tiny.en Whisper and the fixtures' prepared corpus are tests/conftest.py's, shared by the session)."""

from pathlib import Path

import pytest

from tests.helpers.corpora import synthetic_rows, write_corpus

@pytest.fixture(scope="module")
def corpus(tiny_tts, tmp_path_factory) -> Path:
    """A corpus of one synthetic voice for the tiny model: 12 training rows, 3 validation rows."""
    folder = tmp_path_factory.mktemp("corpus") / "voice1"
    return write_corpus(folder, tiny_tts, synthetic_rows(tiny_tts, 1, 12, seed=0), synthetic_rows(tiny_tts, 1, 3, seed=99))
