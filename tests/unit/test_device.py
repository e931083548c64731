"""dia2.device: a device this machine lacks is one clear error naming the flag, refused before
anything loads (issue 15, bug 4)."""

import pytest
import torch


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda", "--device cuda: CUDA is not available .*; this machine has: cpu"),
        ("cuda:3", "--device cuda:3: .*this machine has: cpu"),
        ("gpu", "--device gpu: not a device name; this machine has: cpu"),
    ],
)
def test_a_missing_device_is_refused_before_anything_loads(device, message, monkeypatch):
    import dia2.device
    from dia2.device import DeviceError, resolve_device
    from dia2.errors import Dia2Error
    from dia2.generation.tts import Dia2

    monkeypatch.setattr(dia2.device.torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=message) as caught:
        resolve_device(device)
    assert isinstance(caught.value, Dia2Error) and "\n" not in str(caught.value)
    # Refused before any file is looked at: this folder does not exist.
    with pytest.raises(DeviceError, match=message):
        Dia2.from_repo("/nonexistent/model", device=device)


def test_auto_and_cpu_devices_resolve():
    from dia2.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
