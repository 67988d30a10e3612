"""Device names from users (``--device``, ``device=``) -> a usable ``torch.device``, or a clear error.

``torch.device("cuda")`` is accepted by torch even on a CPU-only build; the failure comes later, deep in
``model.to`` ("Torch not compiled with CUDA enabled", 30 lines of traceback). Checking once, here, gives
one line that says what is wrong and what exists.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .errors import ZRewardInputError

KNOWN_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def cpu_name() -> str:
    """The CPU's model name and logical core count (from /proc/cpuinfo; elsewhere the platform's
    processor name), for the environment recorded beside every measurement."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_devices() -> list[str]:
    """The device names that work in this process (``cpu``, ``cuda:0`` ...), for error messages."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        names += [f"xpu:{i}" for i in range(torch.xpu.device_count())]
    return names


def resolve_device(device: str | torch.device | None, name: str = "device") -> torch.device:
    """Parse and check a device; ``None`` means the CPU.

    Raises :class:`ZRewardInputError` naming ``name`` (e.g. ``"--device"``) for a name torch does not know,
    a device type this package does not run on, CUDA on a build or machine without it (the message says
    which), and a device index that does not exist.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ZRewardInputError(
            name, f"unknown device {str(device)!r}; use one of {available_devices()}"
        ) from None
    if dev.type not in KNOWN_DEVICE_TYPES:
        raise ZRewardInputError(
            name, f"device type {dev.type!r} is not supported; use one of {available_devices()}"
        )
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise ZRewardInputError(
                name,
                f"{str(device)!r} needs a CUDA build of PyTorch; this one ({torch.__version__}) is CPU-only. "
                "Install the CUDA build (https://pytorch.org/get-started/locally/) or use --device cpu",
            )
        if not torch.cuda.is_available():
            raise ZRewardInputError(name, f"{str(device)!r}: no CUDA GPU is visible on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ZRewardInputError(
                name, f"{str(device)!r}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)"
            )
    elif str(dev) not in available_devices() and f"{dev.type}:0" not in available_devices():
        raise ZRewardInputError(
            name, f"{str(device)!r} is not available here; use one of {available_devices()}"
        )
    return dev
