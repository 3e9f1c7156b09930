"""Which build of llama.cpp's CPU kernels this process runs, and where its programs are.

ai_space/llama/build_server.sh builds `llama-server` and `llama-quantize` once, and the CPU
backend once per variant (the x86-64-v3 floor, and AVX-512), each in its own folder beside a
copy of the programs: ggml's loader takes the best libggml-cpu-*.so it finds next to the
executable (and in the working directory, so start the programs from their folder).
The variant is chosen here, from the flags the kernel reports in /proc/cpuinfo, before anything
is loaded: a variant is a candidate only when every feature it was compiled for is reported.
AMX is never a candidate, whatever the build holds: its kernels fault on hosts that report AMX
without granting the tile state. AVX-VNNI is a feature of its own (`avx_vnni`), not implied by
AVX-512 VNNI: an AMD EPYC reports AVX-512 without it, and a build using it died by SIGILL there.
ggml's own check (`ggml_backend_score`, from CPUID) still refuses a library the CPU cannot run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from ai_space.config import ConfigError

# GGML feature names (build_server.sh's VARIANTS) -> the /proc/cpuinfo flags each one needs.
# GGML_AVX512 compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw.
FEATURE_FLAGS: dict[str, frozenset[str]] = {
    "SSE42": frozenset({"sse4_2"}),
    "AVX": frozenset({"avx"}),
    "F16C": frozenset({"f16c"}),
    "FMA": frozenset({"fma"}),
    "AVX2": frozenset({"avx2"}),
    "BMI2": frozenset({"bmi2"}),
    "AVX_VNNI": frozenset({"avx_vnni"}),
    "AVX512": frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}),
    "AVX512_VBMI": frozenset({"avx512vbmi"}),
    "AVX512_VNNI": frozenset({"avx512_vnni"}),
    "AVX512_BF16": frozenset({"avx512_bf16"}),
}
# Never chosen, even on a CPU that reports them.
FORBIDDEN = frozenset({"AMX_TILE", "AMX_INT8", "AMX_BF16"})
PROGRAMS = ("llama-server", "llama-quantize")


class EngineMissing(ConfigError):
    """The llama.cpp programs are not built where the server looks for them."""


class CpuUnsupported(ConfigError):
    """No CPU variant in the build runs on this CPU (it lacks the AVX2 floor)."""


def engine_home() -> Path:
    """The built engine's folder: LLAMA_SERVER_HOME, else the venv's llama/, else /opt/llama."""
    override = os.environ.get("LLAMA_SERVER_HOME")
    if override:
        return Path(override)
    beside = Path(sys.prefix) / "llama"
    return beside if beside.exists() else Path("/opt/llama")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU flags the kernel reports to this process (the first processor's `flags` line)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def required_flags(features: Iterable[str]) -> frozenset[str] | None:
    """The cpuinfo flags a variant built with these GGML features needs; None when it may never
    be chosen (AMX, or a feature this module does not know how to check)."""
    needed: set[str] = set()
    for feature in features:
        if feature in FORBIDDEN or feature not in FEATURE_FLAGS:
            return None
        needed |= FEATURE_FLAGS[feature]
    return frozenset(needed)


def choose(flags: frozenset[str], available: Mapping[str, Iterable[str]]) -> str:
    """The variant to run: of those in `available` (name -> GGML features it was built with)
    whose every feature the CPU reports, the one with the most. CpuUnsupported when none."""
    candidates, missing = [], []
    for name, features in available.items():
        needed = required_flags(features)
        if needed is None:
            continue
        if needed <= flags:
            candidates.append((len(needed), name))
        missing.append((len(needed - flags), name, " ".join(sorted(needed - flags))))
    if not candidates:
        closest = f"; {min(missing)[1]} lacks {min(missing)[2]}" if missing else ""
        raise CpuUnsupported(f"no llama.cpp CPU variant runs on this CPU (built: "
                             f"{', '.join(sorted(available)) or 'none'}{closest})")
    return max(candidates)[1]


def _record(home: Path) -> dict[str, str]:
    """The build's BUILD record (`key value` lines); empty when there is none."""
    try:
        lines = (home / "BUILD").read_text().splitlines()
    except OSError:
        return {}
    return {key: value for key, _, value in (line.partition(" ") for line in lines)}


def engine_version() -> str:
    """The llama-cpp-python release whose llama.cpp the built engine is; EngineMissing when
    nothing is built."""
    home = engine_home().resolve()
    version = _record(home).get("version")
    if not version:
        raise EngineMissing(f"llama.cpp's programs are not built at {home}; run `make venv`")
    return version


def built_variants(home: Path) -> dict[str, tuple[str, ...]]:
    """The variants the build in `home` holds (name -> GGML features), read from its BUILD
    record; only those whose folder has its CPU library."""
    variants: dict[str, tuple[str, ...]] = {}
    for item in _record(home).get("variants", "").split():
        name, _, features = item.partition(":")
        if (home / name / f"libggml-cpu-{name}.so").is_file():
            variants[name] = tuple(features.split(","))
    return variants


def engine_binary(name: str = "llama-server", flags: frozenset[str] | None = None) -> Path:
    """The absolute path of a llama.cpp program that, started as is, loads the CPU variant
    chosen for `flags` (this machine's when None). EngineMissing when it is not built."""
    if name not in PROGRAMS:
        raise ValueError(f"unknown llama.cpp program {name!r}; built: {', '.join(PROGRAMS)}")
    home = engine_home().resolve()
    variants = built_variants(home)
    if not variants:
        raise EngineMissing(f"llama.cpp's {name} is not built at {home}; run `make venv` (or set "
                            f"LLAMA_SERVER_HOME to the folder build_server.sh printed)")
    variant = choose(cpu_flags() if flags is None else flags, variants)
    path = home / variant / name
    if not os.access(path, os.X_OK):
        raise EngineMissing(f"{path} is missing or not executable; run `make venv`")
    return path
