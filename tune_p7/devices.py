"""Which torch device a run trains on, checked once before anything starts.

    resolve_device("auto")            # cuda > mps > cpu, whichever this machine has
    resolve_device("cuda:3")          # DeviceError: one sentence, e.g. only cuda:0 exists
    trial_device("auto", gpus_per_trial=0.25, on_cluster=False)   # -> "cuda"

A device that torch cannot use here (``cuda`` on a CPU build, ``cuda:N`` past the last GPU,
``mps`` off a Mac, a malformed string) fails on its first tensor with a traceback, and in a
sweep every trial would fail that way and be retried; here it is one sentence instead, raised
as DeviceError (a ValueError) by the train CLI, the sweep and confirm before they start, and
by a trial that is given one anyway. Also whether bf16 autocast pays on a device
(bf16_is_fast, uses_bf16). Imports torch only (GPU machines may lack Ray).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

KNOWN = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(ValueError):
    """A device torch cannot use here; the message is one sentence naming it and the fix."""


def device_available(name: str) -> bool:
    """Whether this machine has the device ``name`` (a sweep may plan for a cluster's)."""
    try:
        resolve_device(name)
    except DeviceError:
        return False
    return True


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``: "auto" picks cuda > mps > cpu; anything else must be
    a device this machine has (DeviceError otherwise)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = parse_device(name)
    if device.type == "cuda":
        _check_cuda(name, device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name}: MPS is not available here (it needs a Mac with "
                          f"Apple silicon and a torch built for it); use --device cpu or auto.")
    return device


def parse_device(name: str) -> torch.device:
    """``name`` as a torch device of a supported type (cpu, cuda, mps), not yet checked
    against this machine; DeviceError for a malformed or unsupported string."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"--device {name!r} is not a device; use {KNOWN}.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {name!r} is not supported; use {KNOWN}.")
    return device


def _check_cuda(name: str, device: torch.device) -> None:
    if torch.version.cuda is None:
        raise DeviceError(f"--device {name}: this torch ({torch.__version__}) is built without "
                          f"CUDA; use --device cpu or auto, or install a CUDA build of torch.")
    count = torch.cuda.device_count()
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise DeviceError(f"--device {name}: torch sees no CUDA GPU on this machine{hint}; "
                          f"use --device cpu or auto.")
    if device.index is not None and device.index >= count:
        gpus = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise DeviceError(f"--device {name}: this machine has {count} CUDA "
                          f"GPU{'s' if count > 1 else ''} ({gpus}); use one of them or "
                          f"--device cuda.")


def trial_device(name: str, gpus_per_trial: float, on_cluster: bool) -> str:
    """The device string a Ray trial trains on, checked where the driver can check it.

    Ray hides every GPU from a trial that reserves none and shows a trial its own GPUs as
    cuda:0.., so "auto" means "cuda" when gpus_per_trial > 0 (whether the cluster has those
    GPUs is tune_p7.resources' check) and otherwise mps where this machine has it, else cpu;
    on a cluster (on_cluster) the workers' devices are unknown here, so "auto" without GPUs
    is "cpu". An explicit device is checked on this machine when trials run on it (a local
    Ray); on a cluster only its form is checked, as the driver may lack the workers' GPUs.
    """
    if name == "auto":
        if gpus_per_trial > 0:
            return "cuda"
        if not on_cluster and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if on_cluster:
        parse_device(name)
    else:
        resolve_device(name)
    return name


def bf16_is_fast(device: torch.device, cpuinfo: str | None = None) -> bool:
    """True where the device multiplies bfloat16 faster than float32, so autocast pays.

    CUDA: compute capability >= 8.0 (Ampere on: bf16 tensor cores). CPU: AMX (flag amx_bf16),
    or avx512_bf16 on AMD. Measured (benchmarks/README.md, "bf16 on CPUs"): the bf16 step
    ran 2.2x the fp32 one on an AMD EPYC with avx512_bf16, but bf16 matmuls ran at about
    half the fp32 speed on an Intel Xeon that shows avx512_bf16 without AMX, so that flag
    alone does not mean fast. cpuinfo: the text of /proc/cpuinfo (read when None; no such
    file, e.g. not Linux: False). Any other device (mps, ...): False.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":
        return False
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    first = {}  # the first processor's fields (every processor lists the same flags)
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    flags = set(first.get("flags", "").split())
    amd = first.get("vendor_id") == "AuthenticAMD"
    return "amx_bf16" in flags or ("avx512_bf16" in flags and amd)


def uses_bf16(setting: str, device: torch.device) -> bool:
    """The resolved bf16 setting ("auto" | "on" | "off") of a run on ``device``."""
    return setting == "on" or (setting == "auto" and bf16_is_fast(device))
