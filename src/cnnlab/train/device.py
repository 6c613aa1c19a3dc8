"""Device names from users ("auto", "cpu", "cuda", "cuda:1", "mps") turned into a `torch.device`, or a clear error.

torch accepts "cuda" on a machine without a GPU and fails later, deep inside the first `.to()`, with a driver
message; a typo fails with a list of twenty device types. Every command that takes ``--device`` resolves it here
first, so the user reads one line naming the option, the value and what this machine has.

`available_memory_bytes` says how much of the CPU's memory is free, for the tasks (and the scan) that refuse work that
would not fit in it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _available() -> str:
    found = ["cpu"] + [f"cuda:{index}" for index in range(_cuda_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


def parse_device(name: str | torch.device) -> torch.device:
    """ "auto" -> the first CUDA device if there is one, else the CPU; any other name as written, whether or not this
    machine has it (`cnnlab budget` sizes a step for a GPU it does not need).

    Raises:
        CnnlabError: a name that is no device, or a device type cnnlab does not run on.
    """
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CnnlabError(f"unknown device {str(name)!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps", "meta"):
        raise CnnlabError(f"device {str(name)!r} is not supported by cnnlab; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cpu" and device.index is not None:
        # torch takes "cpu:0" for the CPU, but safetensors refuses it: loading a run on it reported the run's weights
        # as "damaged, not a whole safetensors file (device cpu:0 is invalid)". There is one CPU device.
        return torch.device("cpu")
    return device


def resolve_device(name: str | torch.device) -> torch.device:
    """ "auto" -> the first CUDA device if there is one, else the CPU; any other name must exist on this machine.

    Raises:
        CnnlabError: an unknown device name, or a device this machine does not have (names the ones it has).
    """
    device = parse_device(name)
    if device.type == "cuda":
        count = _cuda_count()
        if count == 0:
            raise CnnlabError(
                f"device {str(name)!r} was asked for, but torch finds no CUDA GPU here; available: {_available()}"
            )
        if device.index is not None and device.index >= count:
            raise CnnlabError(
                f"device {str(name)!r} does not exist: this machine has {count} CUDA GPU(s); available: {_available()}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CnnlabError(
            f"device {str(name)!r} was asked for, but Apple's MPS is not available here; available: {_available()}"
        )
    return device


def available_memory_bytes() -> int | None:
    """Free RAM (MemAvailable on Linux; the physical pages free where sysconf says), or None where the system does
    not say: macOS has no ``SC_AVPHYS_PAGES`` and Windows no `os.sysconf`, and both raised here."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
