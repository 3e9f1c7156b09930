"""What the CPU offers this process: the container's core quota, and bf16 support."""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def quota_cores(root: Path = _CGROUP) -> int | None:
    """The container's CPU quota in whole cores (rounded up), or None when unlimited.

    cgroup v2 keeps it in `cpu.max` ("max 100000" or "200000 100000"), v1 in
    `cpu/cpu.cfs_quota_us` (-1 for none) over `cpu/cpu.cfs_period_us`.
    """
    v2 = root / "cpu.max"
    if v2.is_file():
        parts = v2.read_text().split()
        if len(parts) == 2 and parts[0] != "max":
            return _cores(parts[0], parts[1])
        return None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
        if quota.is_file() and period.is_file():
            return _cores(quota.read_text().strip(), period.read_text().strip())
    return None


def _cores(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def default_threads(root: Path = _CGROUP) -> int:
    """Threads for inference: the CPU quota, else the cores this process may run on."""
    usable = len(os.sched_getaffinity(0))
    quota = quota_cores(root)
    return max(1, min(usable, quota) if quota is not None else usable)


def has_avx512_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU does bf16 dot products natively (the avx512_bf16 or amx_bf16 flag)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False
