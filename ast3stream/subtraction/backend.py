"""Choice of the array backend: CuPy on a GPU when allowed and present, NumPy otherwise."""
from __future__ import annotations

import functools


@functools.cache
def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy as cp

        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device
        return False


def use_gpu(backend: str) -> bool:
    """Resolve ``"auto" | "cupy" | "numpy"``; ``"cupy"`` without a GPU raises."""
    if backend == "numpy":
        return False
    if backend == "cupy" and not gpu_available():
        raise RuntimeError("backend 'cupy' requested but no CuPy/GPU is available")
    return gpu_available()
