"""The installed llama.cpp is the declared portable build, whatever CPU built it.

ai_space/llama/build_wheel.sh declares the flags: an x86-64-v3 floor (AVX2, FMA, F16C, BMI2), no
AVX-512, no AMX, nothing native. A native build on a recent Xeon ships AMX kernels that die by
SIGILL on hosts that report AMX without granting the tile state; a native build on a machine
without AMX ships whatever else that machine had. The first test reads the machine code, the
second what the library says it was built for, the third where the installed wheel came from.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

import llama_cpp
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "ai_space" / "llama" / "build_wheel.sh"
LIB = Path(llama_cpp.__file__).parent / "lib"
# AMX's instructions (tile config, loads, stores and the dot products), as objdump spells them.
AMX = re.compile(r"\s(ldtilecfg|sttilecfg|tilerelease|tilezero|tileloadd|tileloaddt1|tilestored|"
                 r"tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|tdpfp16ps)\s")
# Any use of a 512-bit register or an AVX-512 mask register is AVX-512 code.
AVX512 = re.compile(r"%zmm\d|%k[1-7]\b")
FMA = re.compile(r"\svfmadd\d+ps\s")
# GGML_* CMake options and the names llama_print_system_info() gives the same features.
SYSTEM_INFO_NAMES = {"AVX": "AVX", "AVX2": "AVX2", "FMA": "FMA", "F16C": "F16C", "BMI2": "BMI2",
                     "AVX_VNNI": "AVX_VNNI", "AVX512": "AVX512", "AVX512_VBMI": "AVX512_VBMI",
                     "AVX512_VNNI": "AVX512_VNNI", "AVX512_BF16": "AVX512_BF16",
                     "AMX_INT8": "AMX_INT8"}


def _declared() -> dict[str, bool]:
    flags = subprocess.run([str(BUILD_SCRIPT), "--flags"], capture_output=True, text=True,
                           check=True).stdout.split()
    return {m[1]: m[2] == "ON" for f in flags if (m := re.fullmatch(r"-DGGML_(\w+)=(ON|OFF)", f))}


def _binutils() -> None:
    if shutil.which("objdump") is None or shutil.which("as") is None:
        if os.environ.get("CI"):
            pytest.fail("objdump or as is missing; `make test` as root installs binutils")
        pytest.skip("needs objdump and as: sudo apt-get install -y binutils")


def _disassembly(lib: Path) -> str:
    _binutils()
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True,
                          text=True, check=True).stdout


def test_the_patterns_find_amx_and_avx512_where_they_are(tmp_path: Path) -> None:
    """GIVEN an object assembled here with AMX instructions and one AVX-512 add WHEN disassembled
    and searched as the library is below THEN every AMX instruction and the zmm operands are
    found (so a clean library is clean, not a pattern that matches nothing)."""
    _binutils()
    source = tmp_path / "amx.s"
    source.write_text("ldtilecfg (%rdi)\ntilezero %tmm0\ntileloadd (%rsi,%rdx,1), %tmm1\n"
                      "tdpbssd %tmm2, %tmm1, %tmm0\ntilestored %tmm0, (%rdi,%rdx,1)\n"
                      "tilerelease\nvaddps %zmm1, %zmm2, %zmm3\n")
    subprocess.run(["as", str(source), "-o", str(tmp_path / "amx.o")], check=True)
    code = _disassembly(tmp_path / "amx.o")
    assert {m.group(1) for m in AMX.finditer(code)} == {
        "ldtilecfg", "tilezero", "tileloadd", "tdpbssd", "tilestored", "tilerelease"}
    assert len(AVX512.findall(code)) == 3


@pytest.fixture(scope="module")
def cpu_libs() -> list[Path]:
    """The CPU backend's shared objects in the installed package."""
    libs = sorted(LIB.glob("libggml-cpu*.so*"))
    assert libs, f"no libggml-cpu in {LIB}: {sorted(p.name for p in LIB.iterdir())}"
    return libs


def test_the_cpu_backend_holds_no_amx_and_no_avx512_instruction(cpu_libs: list[Path]) -> None:
    """GIVEN the installed CPU backend WHEN disassembled THEN not one AMX instruction and no
    AVX-512 register appears, while the AVX2/FMA kernels are there (the floor is used)."""
    for lib in cpu_libs:
        code = _disassembly(lib)
        amx = sorted({m.group(1) for m in AMX.finditer(code)})
        assert not amx, f"{lib.name} holds AMX instructions: {amx}"
        avx512 = AVX512.findall(code)
        assert not avx512, f"{lib.name} uses AVX-512 ({len(avx512)} operands, e.g. {avx512[:3]})"
        assert len(FMA.findall(code)) > 100, f"{lib.name} has no FMA kernels: not the floor"


def test_the_library_reports_the_declared_features_not_the_build_machine() -> None:
    """GIVEN the declared GGML flags WHEN llama.cpp prints what it was built with THEN each feature
    declared ON is there and each declared OFF is absent (AVX-512 and AMX included, even on a
    machine that has them)."""
    info = llama_cpp.llama_print_system_info().decode()
    built = {name for name, value in re.findall(r"(\w+) = (\d+)", info) if value == "1"}
    declared = _declared()
    assert declared["NATIVE"] is False
    for option, name in SYSTEM_INFO_NAMES.items():
        assert (name in built) == declared[option], f"{name}: declared {declared[option]}, {info}"


def test_the_installed_wheel_is_the_one_built_with_these_flags() -> None:
    """GIVEN the installed llama-cpp-python WHEN its origin is read THEN it is a wheel from the
    build script's cache folder whose FLAGS file holds exactly the flags the script declares (a
    wheel built with other flags, or pip's own cached build, would come from elsewhere)."""
    dist = importlib.metadata.distribution("llama-cpp-python")
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    wheel = Path(unquote(urlparse(origin.get("url", "")).path))
    assert wheel.suffix == ".whl", f"llama-cpp-python was not installed from a wheel: {origin}"
    flags = (wheel.parent / "FLAGS").read_text().strip()
    declared = subprocess.run([str(BUILD_SCRIPT), "--flags"], capture_output=True, text=True,
                              check=True).stdout.strip()
    assert flags == declared


def test_the_worker_image_builds_with_the_same_script() -> None:
    """GIVEN Dockerfile.worker WHEN read THEN llama.cpp is built by the same script as `make`
    (no CMAKE_ARGS of its own that could drift from the declared flags)."""
    dockerfile = (ROOT / "ai_space" / "Dockerfile.worker").read_text()
    assert "ai_space/llama/build_wheel.sh" in dockerfile
    assert "CMAKE_ARGS" not in dockerfile and "llama-cpp-python==" not in dockerfile
