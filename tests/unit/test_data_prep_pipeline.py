"""data_prep.pipeline.run_prep: what it refuses before it loads a model."""

import pytest


def test_data_prep_refuses_a_missing_asr_device_before_loading_the_model(tmp_path, monkeypatch):
    import data_prep.pipeline
    import data_prep.work
    import dia2.device
    from data_prep.config import AsrOptions, PrepConfig
    from dia2.device import DeviceError

    monkeypatch.setattr(dia2.device.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(data_prep.work, "load_prep_model", lambda options: pytest.fail("model loaded"))
    audio = tmp_path / "in"
    audio.mkdir()
    (audio / "a.wav").write_bytes(b"")
    config = PrepConfig(input=audio, output=tmp_path / "out", asr=AsrOptions(asr_device="cuda"))
    with pytest.raises(DeviceError, match="--asr-device cuda: CUDA is not available"):
        data_prep.pipeline.run_prep(config)
