"""What this machine can do: the dense matmul peak that throughput figures are measured against.

Every benchmark that reports a fraction of peak measures the peak in the same run, with the same
thread count and dtype, so the fraction does not depend on which machine the figure came from.
"""

from __future__ import annotations

import platform
import time

import torch


def matmul_peak_flops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Best-of-`repeats` FLOP/s of an n x n x n matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def best_time(fn, repeats: int) -> float:
    """Best wall time of `fn()` over `repeats` runs, after one warm-up run (allocator, kernels)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def describe() -> dict:
    """Machine facts recorded beside every figure."""
    info = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
