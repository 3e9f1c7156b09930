"""The llama.cpp engine `make` builds: declared flags, run-time CPU variants, never AMX.

ai_space/llama/build_server.sh builds llama-server and llama-quantize once, and the CPU backend
once per declared variant, each variant in a folder of its own; ai_space/llama/variants.py picks
the folder from the flags the kernel reports. These tests read the machine code of everything
built and of the library a running llama-server has loaded, and feed the choice the flags of
CPUs this machine is not (an AMD EPYC with AVX-512 but no AVX-VNNI, a Sapphire Rapids with AMX,
an AVX2-only desktop, a CPU without AVX2).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import pytest

from ai_space.llama.variants import (
    CpuUnsupported,
    EngineMissing,
    built_variants,
    choose,
    cpu_flags,
    engine_binary,
    engine_home,
    engine_version,
)
from ai_space.llama.weights import chat_weights
from ai_space.models.packaged import resolve
from bench.common import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "ai_space" / "llama" / "build_server.sh"
# AMX's instructions (tile config, loads, stores and the dot products), as objdump spells them.
AMX = re.compile(r"\s(ldtilecfg|sttilecfg|tilerelease|tilezero|tileloadd|tileloaddt1|tilestored|"
                 r"tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|tdpfp16ps)\s")
# Any use of a 512-bit register or an AVX-512 mask register is AVX-512 code.
AVX512 = re.compile(r"%zmm\d|%k[1-7]\b")
FMA = re.compile(r"\svfmadd\d+ps\s")
# AVX-VNNI: the VEX-encoded dot products, which objdump marks {vex}; AVX-512 VNNI's are EVEX.
AVX_VNNI = re.compile(r"\{vex\} vpdp(bu|ws)sds?\s")

# What each CPU reports in /proc/cpuinfo (the vector flags; the rest do not matter here).
BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx f16c fma avx2 bmi1 bmi2 xsave"
EPYC_ZEN4 = frozenset((BASE + " avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma "
                       "avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq "
                       "avx512_bf16 vaes vpclmulqdq gfni").split())
SAPPHIRE_RAPIDS = EPYC_ZEN4 | {"avx_vnni", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16"}
ALDER_LAKE = frozenset((BASE + " avx_vnni vaes gfni").split())
HASWELL = frozenset(BASE.split())
SANDY_BRIDGE = HASWELL - {"f16c", "fma", "avx2", "bmi1", "bmi2"}
# Upstream's x86 list (GGML_CPU_ALL_VARIANTS in ggml/src/CMakeLists.txt), AMX and AVX-VNNI
# variants included: the choice must refuse those even when a build holds them.
UPSTREAM = {
    "x64": (), "sse42": ("SSE42",), "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"), "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
                "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI",
                   "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
             "AVX512_VNNI", "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
                       "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}


def _script(*args: str, script: Path = BUILD_SCRIPT) -> str:
    return subprocess.run([str(script), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def _declared() -> dict[str, tuple[str, ...]]:
    """The variants build_server.sh declares: name -> GGML features."""
    return {name: tuple(features.split(",")) for name, _, features in
            (item.partition(":") for item in _script("--variants").split())}


def test_the_choice_follows_the_flags_the_cpu_reports() -> None:
    """GIVEN the declared variants WHEN the flags are an AMD EPYC's (AVX-512 with VBMI and VNNI,
    no AVX-VNNI), a Sapphire Rapids' (AMX too), an AVX2 desktop's, one without AVX-512 VNNI
    THEN the variant is the one with the most features the CPU reports; WHEN the CPU lacks
    AVX2 THEN CpuUnsupported names what is missing."""
    declared = _declared()
    assert set(declared) == {"haswell", "skylakex"}
    assert choose(EPYC_ZEN4, declared) == "skylakex"
    assert choose(SAPPHIRE_RAPIDS, declared) == "skylakex"
    assert choose(EPYC_ZEN4 - {"avx512_vnni"}, declared) == "skylakex"
    assert choose(EPYC_ZEN4 - {"avx512bw"}, declared) == "haswell"
    assert choose(HASWELL, declared) == "haswell"
    assert choose(ALDER_LAKE, declared) == "haswell"
    with pytest.raises(CpuUnsupported, match="haswell lacks avx2 bmi2 f16c fma"):
        choose(SANDY_BRIDGE, declared)


def test_the_choice_never_takes_amx_and_takes_avx_vnni_only_when_reported() -> None:
    """GIVEN upstream's whole variant list (sapphirerapids with AMX, alderlake with AVX-VNNI)
    WHEN a Sapphire Rapids reports AMX THEN its AMX variant is still not chosen; WHEN an EPYC
    reports AVX-512 without avx_vnni THEN the AVX-VNNI variant is not chosen; WHEN a CPU
    reports avx_vnni THEN it may be."""
    assert choose(SAPPHIRE_RAPIDS, UPSTREAM) == "zen4"
    assert choose(EPYC_ZEN4, UPSTREAM) == "zen4"
    assert choose(HASWELL | {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"},
                  UPSTREAM) == "skylakex"
    assert choose(ALDER_LAKE, UPSTREAM) == "alderlake"
    assert choose(ALDER_LAKE - {"avx_vnni"}, UPSTREAM) == "haswell"
    assert choose(SANDY_BRIDGE, UPSTREAM) == "sandybridge"


def test_cpu_flags_reads_the_first_processor(tmp_path: Path) -> None:
    """GIVEN a cpuinfo file WHEN read THEN its first `flags` line, as a set; WHEN there is no
    file THEN no flags (and so no variant)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "none") == frozenset()


def test_the_cache_key_changes_with_the_flags_and_the_variants(tmp_path: Path) -> None:
    """GIVEN the build script and copies with one flag or one variant changed WHEN asked for
    their cache keys THEN all three differ, so a build with other flags is never reused."""
    text = BUILD_SCRIPT.read_text()
    keys = {_script("--key")}
    for old, new in (("-DGGML_OPENMP=ON", "-DGGML_OPENMP=OFF"),
                     (",AVX2,BMI2,AVX512\"", ",AVX2,BMI2,AVX512,AVX512_VNNI\"")):
        assert old in text
        copy = tmp_path / f"build_{len(keys)}.sh"
        copy.write_text(text.replace(old, new))
        copy.chmod(0o755)
        keys.add(_script("--key", script=copy))
    assert len(keys) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", key) for key in keys)


def test_an_engine_not_built_says_to_run_make_venv(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN LLAMA_SERVER_HOME naming an empty folder WHEN a program is asked for THEN
    EngineMissing (a ConfigError) names the folder and `make venv`; WHEN the folder holds a
    BUILD record but not the chosen variant's files THEN the same."""
    monkeypatch.setenv("LLAMA_SERVER_HOME", str(tmp_path))
    assert engine_home() == tmp_path
    with pytest.raises(EngineMissing, match=r"make venv") as missing:
        engine_binary()
    assert str(tmp_path) in str(missing.value)
    (tmp_path / "BUILD").write_text(f"version 0.3.36\nvariants {_script('--variants')}\n")
    (tmp_path / "haswell").mkdir()
    (tmp_path / "haswell" / "libggml-cpu-haswell.so").write_bytes(b"")
    with pytest.raises(EngineMissing, match=r"make venv"):
        engine_binary("llama-server", HASWELL)
    with pytest.raises(ValueError, match="llama-cli"):
        engine_binary("llama-cli")


@pytest.fixture(scope="module")
def home() -> Path:
    """The built engine, as the server finds it."""
    try:
        engine_binary()
    except EngineMissing as missing:
        pytest.fail(str(missing))
    return engine_home().resolve()


def test_the_build_records_its_flags(home: Path) -> None:
    """GIVEN the engine `make venv` linked WHEN its BUILD record is read THEN it holds exactly
    the flags, variants and key the script declares now, and every declared variant is built."""
    record = dict(line.partition(" ")[::2] for line in (home / "BUILD").read_text().splitlines())
    assert record["flags"] == _script("--flags")
    assert record["variants"] == _script("--variants")
    assert record["key"] == _script("--key") == home.name
    assert "-DGGML_NATIVE=OFF" in record["flags"].split()
    assert set(built_variants(home)) == set(_declared())


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
    """GIVEN an object assembled here with AMX instructions, one AVX-512 add and one AVX-VNNI dot
    product WHEN disassembled and searched as the build is below THEN every AMX instruction, the
    zmm operands and the VEX dot product are found (so a clean library is clean, not a pattern
    that matches nothing)."""
    _binutils()
    source = tmp_path / "amx.s"
    source.write_text("ldtilecfg (%rdi)\ntilezero %tmm0\ntileloadd (%rsi,%rdx,1), %tmm1\n"
                      "tdpbssd %tmm2, %tmm1, %tmm0\ntilestored %tmm0, (%rdi,%rdx,1)\n"
                      "tilerelease\nvaddps %zmm1, %zmm2, %zmm3\n"
                      "{vex} vpdpbusd %ymm1, %ymm2, %ymm3\n")
    subprocess.run(["as", str(source), "-o", str(tmp_path / "amx.o")], check=True)
    code = _disassembly(tmp_path / "amx.o")
    assert {m.group(1) for m in AMX.finditer(code)} == {
        "ldtilecfg", "tilezero", "tileloadd", "tdpbssd", "tilestored", "tilerelease"}
    assert len(AVX512.findall(code)) == 3
    assert len(AVX_VNNI.findall(code)) == 1


def test_nothing_shipped_holds_amx_and_only_avx512_variants_use_zmm(home: Path) -> None:
    """GIVEN every shared object and program in the built folder WHEN disassembled THEN not one
    AMX instruction and no AVX-VNNI (VEX) dot product; the haswell variant has FMA kernels and
    no AVX-512 register, the AVX-512 variants do use zmm registers."""
    seen: set[int] = set()
    files = sorted(p for p in home.rglob("*") if p.is_file() and not p.is_symlink()
                   and p.read_bytes()[:4] == b"\x7fELF")
    assert len(files) >= 4 + len(_declared()), [str(p.relative_to(home)) for p in files]
    for path in files:
        if path.stat().st_ino in seen:
            continue  # a hard link of a program already read
        seen.add(path.stat().st_ino)
        code = _disassembly(path)
        amx = sorted({m.group(1) for m in AMX.finditer(code)})
        assert not amx, f"{path.relative_to(home)} holds AMX instructions: {amx}"
        assert not AVX_VNNI.search(code), f"{path.relative_to(home)} holds AVX-VNNI code"
        if path.name == "libggml-cpu-haswell.so":
            assert not AVX512.findall(code), f"{path.name} uses AVX-512"
            assert len(FMA.findall(code)) > 100, f"{path.name} has no FMA kernels"
        elif path.name.startswith("libggml-cpu-"):
            assert len(AVX512.findall(code)) > 1000, f"{path.name} has no AVX-512 code"


@pytest.fixture(scope="module")
def running(home: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """llama-server from engine_binary(), started as is on the packaged SmolLM2, ready."""
    server = engine_binary("llama-server")
    gguf = resolve("pkg:smollm2", None).gguf_path
    assert gguf is not None
    port = free_port()
    process = subprocess.Popen([str(server), "-m", str(gguf), "--host", "127.0.0.1", "--port",
                                str(port), "-c", "512", "-np", "1", "-t", "1"],
                               cwd=server.parent, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"llama-server exited ({process.returncode})"
            assert time.monotonic() < deadline, "llama-server was not ready in 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # polling the condition above, not waiting for time to pass
        yield process, server
    finally:
        process.terminate()
        process.wait(30)


def test_the_running_server_loaded_the_chosen_variant_and_no_amx(
        running: tuple[subprocess.Popen[bytes], Path]) -> None:
    """GIVEN llama-server started from engine_binary() WHEN its memory map is read THEN exactly
    one CPU library is loaded, the chosen variant's, from the binary's own folder, with no AMX
    instruction; on a host reporting avx512f THEN that library is AVX-512 code (zmm)."""
    process, server = running
    maps = Path(f"/proc/{process.pid}/maps").read_text()
    loaded = {Path(line.split()[-1]) for line in maps.splitlines()
              if "libggml-cpu" in line.split()[-1]}
    assert len(loaded) == 1, loaded
    lib = loaded.pop()
    # The loader looks beside /proc/self/exe, which names the file with links resolved.
    assert lib == (server.parent / f"libggml-cpu-{server.parent.name}.so").resolve()
    code = _disassembly(lib)
    assert not AMX.search(code), f"{lib.name} holds AMX instructions"
    if "avx512f" not in cpu_flags():
        sys.stderr.write("no avx512f on this host: the AVX-512 check of the loaded kernels "
                         "needs an AVX-512 host\n")
        pytest.skip("this host does not report avx512f, so no AVX-512 variant may load")
    assert server.parent.name == "skylakex"
    assert len(AVX512.findall(code)) > 1000, f"{lib.name} has no AVX-512 code"


def test_make_and_the_worker_image_build_with_the_same_script() -> None:
    """GIVEN the Makefile and Dockerfile.worker WHEN read THEN both build the engine with
    build_server.sh and no flags of their own, and the image puts it at /opt/llama (where
    variants.engine_home looks), with no llama-cpp-python installed."""
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "ai_space" / "Dockerfile.worker").read_text()
    for text in (makefile, dockerfile):
        assert "ai_space/llama/build_server.sh" in text
        assert "-DGGML" not in text and "CMAKE_ARGS" not in text
        assert "llama_cpp" not in text and "build_wheel" not in text
    assert "llama-cpp-python" not in dockerfile
    # An older venv loses the binding (and its only dependency) when make runs again.
    assert "uninstall -y llama-cpp-python diskcache" in makefile
    assert "/opt/llama" in dockerfile
    assert "$(VENV)/llama" in makefile
    worker = (ROOT / "ai_space" / "requirements-worker.txt").read_text()
    assert "llama-cpp-python" not in worker


def test_llama_quantize_from_the_build_makes_the_weights_once(home: Path, tmp_path: Path) -> None:
    """GIVEN the packaged Q4_1 SmolLM2 and an empty cache WHEN its Q8_0 form is asked for THEN
    the built llama-quantize writes one GGUF whose layer weights are Q8_0, named for the engine's
    version; WHEN asked again THEN the same file comes back, unwritten (same inode and mtime)."""
    source = resolve("pkg:smollm2", None).gguf_path
    assert source is not None
    made = chat_weights(source, "q8_0", cache=tmp_path)
    assert sorted(tmp_path.iterdir()) == [made] and f"llama{engine_version()}" in made.name
    types = {t.tensor_type.name for t in gguf.GGUFReader(str(made)).tensors
             if t.name.startswith("blk.") and t.name.endswith("_up.weight")}
    assert types == {"Q8_0"}
    first = made.stat()
    assert chat_weights(source, "q8_0", cache=tmp_path) == made
    again = made.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert chat_weights(source, "file", cache=tmp_path) == source
