"""dia2.audio.asr, the one Whisper wrapper (voice prefixes, data prep, evaluation): its errors name
the flag that fixes them, and its device is checked where it is made (issue 15)."""

import numpy as np
import pytest
import torch

from dia2.audio.asr import AsrError, WhisperTranscriber
from dia2.model.config import SAMPLE_RATE


def test_whisper_errors_name_their_flags(tmp_path):
    from data_prep.config import AsrOptions
    from data_prep.transcribe import asr_transcriber

    with pytest.raises(AsrError, match="pass --whisper-model"):
        WhisperTranscriber(tmp_path / "no-whisper").transcribe(np.zeros(2400, np.float32), SAMPLE_RATE)
    # The same wrapper in data prep names data prep's flag.
    with pytest.raises(AsrError, match="pass --asr-model with"):
        asr_transcriber(AsrOptions(asr_model=str(tmp_path / "no-whisper"))).load()


def test_the_whisper_wrapper_checks_its_device_where_it_is_made():
    from dia2.device import DeviceError

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(DeviceError, match=r"^--asr-device cuda: CUDA is not available"):
        WhisperTranscriber(device="cuda", device_option="--asr-device")
    with pytest.raises(DeviceError, match=r"^--device gpu: not a device name"):
        WhisperTranscriber(device="gpu")
    assert WhisperTranscriber(device="auto").device == "cpu"


def test_whisper_gets_the_cores_this_process_may_use_not_ctranslate2s_four(monkeypatch):
    from dia2.audio.asr import whisper_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert whisper_threads(0) == 2  # a 2-core machine: 2, not 4
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert whisper_threads(0) == 4
    assert whisper_threads(3) == 3  # asked for: as asked
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert whisper_threads(0) == 0  # CTranslate2 reads OMP_NUM_THREADS itself
