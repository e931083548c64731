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
