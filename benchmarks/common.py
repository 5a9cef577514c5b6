"""What every benchmark script shares: the line naming the machine, and this process's memory (Linux /proc)."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Dict, Optional

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: Optional[torch.device] = None) -> str:
    """CPU model, cores, load, torch version and threads, and the GPU when ``device`` is CUDA."""
    text = f"{cpu_model()}, {os.cpu_count()} cores"
    if hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f}"
    text += f"; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    if device is not None and device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def memory_mib() -> Dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process in MiB; empty where /proc is missing."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return values


def reset_peak_rss() -> bool:
    """Make the kernel's peak-RSS counter start again from the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def start_peak_memory(device: torch.device) -> float:
    """Start measuring peak memory; returns what is in use now, in MiB (CUDA: allocated; CPU: resident)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2 ** 20
    reset_peak_rss()
    return memory_mib().get("VmRSS", float("nan"))


def peak_memory(device: torch.device) -> float:
    """The peak since ``start_peak_memory``, in MiB (subtract its return value for the extra memory)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return memory_mib().get("VmHWM", float("nan"))

