"""Timing and peak memory for the benchmark scripts."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds (GPU work included)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: allocated on a GPU, else its peak resident set. VmHWM, unlike ru_maxrss,
    does not carry over the parent's peak into a child process started by fork and exec."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
