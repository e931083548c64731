"""The one check of a requested compute device (`--device`, `device=`), where it enters.

torch accepts any device name and fails later, deep inside a load, with "Torch not compiled with
CUDA enabled" or an "Expected one of cpu, cuda, ..." list; a user gets instead one line naming the
flag and the devices this machine has.
"""

from __future__ import annotations

import os

import torch

from dia2.errors import Dia2Error

AUTO = "auto"
"""The device request meaning: CUDA when available, else the CPU."""


class DeviceError(Dia2Error, ValueError):
    """A device this machine does not have; the message names the flag and the devices it has."""


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_device() -> str:
    """cuda when torch sees a GPU, else cpu."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def available_devices() -> list[str]:
    """Device names this machine can run on, e.g. ['cpu', 'cuda', 'cuda:0', 'cuda:1']."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device | None, flag: str = "--device") -> torch.device:
    """The device to use for `device` (None or "auto": `default_device()`), or DeviceError.

    `flag` is how the user gave it (`--device`, `--asr-device`, `device=`), named in the error.
    """
    if device is None or device == AUTO:
        return torch.device(default_device())
    have = ", ".join(available_devices())
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"{flag} {device}: not a device name; this machine has: {have}") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "torch sees no GPU"
            raise DeviceError(f"{flag} {device}: CUDA is not available ({why}); this machine has: {have}")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceError(f"{flag} {device}: there are {torch.cuda.device_count()} GPU(s); this machine has: {have}")
        return resolved
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    raise DeviceError(f"{flag} {device}: not available here; this machine has: {have}")
