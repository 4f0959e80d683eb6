"""The Vulkan variant's build checks and run-time device selection, without building.

- headers older than the pinned llama.cpp needs are detected, named and fixed (the
  ``vulkan_headers`` check, the ``toolchain: vulkan`` step and its cache key);
- ``vulkaninfo --summary`` parsing: llvmpipe is a software device; it is selected with
  GGML_VK_VISIBLE_DEVICES only when no GPU is there and the user did not choose.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from harness.build import vulkan_devices, vulkan_headers
from harness.build.variants import VariantError, get_variant, load_registry

LLVMPIPE_ONLY = """\
==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.239

Devices:
========
GPU0:
	apiVersion         = 1.3.230
	driverVersion      = 0.0.1
	vendorID           = 0x10005
	deviceType         = PHYSICAL_DEVICE_TYPE_CPU
	deviceName         = llvmpipe (LLVM 15.0.6, 256 bits)
	driverID           = DRIVER_ID_MESA_LLVMPIPE
	driverName         = llvmpipe
"""

GPU_AND_LLVMPIPE = """\
Devices:
========
GPU0:
	apiVersion         = 1.3.277
	deviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName         = NVIDIA H100 80GB HBM3
	driverName         = NVIDIA
GPU1:
	apiVersion         = 1.3.230
	deviceType         = PHYSICAL_DEVICE_TYPE_CPU
	deviceName         = llvmpipe (LLVM 15.0.6, 256 bits)
	driverName         = llvmpipe
"""


def write_header(include: Path, minor: int, patch: int) -> Path:
    (include / "vulkan").mkdir(parents=True, exist_ok=True)
    (include / "vulkan" / "vulkan_core.h").write_text(
        textwrap.dedent(f"""\
        #define VK_HEADER_VERSION {patch}
        #define VK_HEADER_VERSION_COMPLETE VK_MAKE_API_VERSION(0, 1, {minor}, VK_HEADER_VERSION)
        """)
    )
    return include


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_HARNESS_VARIANTS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(vulkan_devices.VISIBLE_ENV, raising=False)
    monkeypatch.delenv(vulkan_headers.FORCE_ENV, raising=False)
    vulkan_devices.list_devices.cache_clear()


def use_system_headers(monkeypatch: pytest.MonkeyPatch, include: Path) -> None:
    monkeypatch.setattr(vulkan_headers, "system_include_dirs", lambda: [include])


# --------------------------------------------------------------------------- headers


def test_header_version_is_read_from_vulkan_core_h(tmp_path: Path) -> None:
    assert vulkan_headers.header_version(write_header(tmp_path, 3, 239)) == (1, 3, 239)
    assert vulkan_headers.header_version(tmp_path / "nowhere") is None


def test_too_old_system_headers_fail_the_check_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    vulkan = get_variant("vulkan")
    check = next(r for r in vulkan.build_requires if r.kind == "vulkan_headers")
    result = check.check()
    assert not result.ok
    assert "1.3.239, too old" in result.detail and ">= 1.3.272" in result.detail
    assert "LayerSettingEXT" in result.detail
    assert "toolchain: vulkan" in result.fix and "Vulkan_INCLUDE_DIR" in result.fix


def test_a_variant_without_the_toolchain_cannot_build_with_old_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    user = tmp_path / "variants.yaml"
    user.write_text("variants:\n  vulkan-plain:\n    extends: vulkan\n    toolchain: null\n")
    monkeypatch.setenv("LLAMA_HARNESS_VARIANTS", str(user))
    problems = [
        p for p in get_variant("vulkan-plain").build_problems() if "Vulkan headers" in p.what
    ]
    assert problems and "too old" in problems[0].detail


def test_the_toolchain_satisfies_the_check_when_it_can_fetch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    monkeypatch.setattr(vulkan_headers, "can_fetch", lambda: (True, "apt-get download x"))
    vulkan = get_variant("vulkan")
    assert not [p for p in vulkan.build_problems() if "Vulkan headers" in p.what]
    monkeypatch.setattr(vulkan_headers, "can_fetch", lambda: (False, "apt-get not found"))
    problems = [p for p in vulkan.build_problems() if "Vulkan headers" in p.what]
    assert problems and "cannot fetch newer ones: apt-get not found" in problems[0].detail


def fake_fetched(cache: Path, minor: int = 4, patch: int = 309) -> Path:
    root = cache / "toolchains" / f"vulkan-headers-debian-trixie-1.{minor}.{patch}"
    write_header(root / "usr" / "include", minor, patch)
    spirv = root / "usr" / "share" / "cmake" / "SPIRV-Headers"
    spirv.mkdir(parents=True)
    (spirv / "SPIRV-HeadersConfig.cmake").write_text("# config\n")
    (root / "toolchain.json").write_text(json.dumps({
        "version": f"1.{minor}.{patch}",
        "source": "Debian trixie libvulkan-dev 1.4.309.0-1",
        "packages": [{"name": "libvulkan-dev", "version": "1.4.309.0-1", "sha256": "ab" * 32},
                     {"name": "spirv-headers", "version": "1.6.1", "sha256": "cd" * 32}],
    }))  # fmt: skip
    return root


def test_cached_headers_give_cmake_args_and_a_key_identity(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    root = fake_fetched(tmp_path / "cache")
    extra, notes, ident = vulkan_headers.vulkan_cmake_args(
        ["-DGGML_VULKAN=on"], (1, 3, 272), "0.3.36"
    )
    assert extra == [
        f"-DVulkan_INCLUDE_DIR={root / 'usr' / 'include'}",
        f"-DSPIRV-Headers_DIR={root / 'usr' / 'share' / 'cmake' / 'SPIRV-Headers'}",
    ]
    assert "1.4.309" in notes[0] and "too old" in notes[1]
    assert ident.startswith("1.4.309 Debian trixie") and "libvulkan-dev 1.4.309.0-1" in ident


def test_new_enough_system_headers_need_no_extra_args(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 4, 309))
    extra, _notes, ident = vulkan_headers.vulkan_cmake_args([], (1, 3, 272), "0.3.36")
    assert extra == [] and ident.startswith("1.4.309 system")


def test_debian_headers_can_be_forced_over_new_enough_system_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 275))
    fake_fetched(tmp_path / "cache")
    monkeypatch.setenv("LLAMA_HARNESS_VULKAN_HEADERS", "debian")
    extra, _notes, ident = vulkan_headers.vulkan_cmake_args([], (1, 3, 272), "0.3.36")
    assert ident.startswith("1.4.309 Debian trixie") and extra[0].startswith("-DVulkan_INCLUDE")


def test_no_way_to_newer_headers_is_one_error_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    monkeypatch.setattr(vulkan_headers, "can_fetch", lambda: (False, "apt-get not found"))
    with pytest.raises(vulkan_headers.VulkanHeadersError) as info:
        vulkan_headers.vulkan_cmake_args([], (1, 3, 272), "0.3.36")
    text = str(info.value)
    assert "1.3.239, too old for llama-cpp-python 0.3.36" in text
    assert "apt-get not found" in text and "Fix:" in text


def test_the_build_plan_stops_with_the_fix_before_compiling(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness.build import build

    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    monkeypatch.setattr(vulkan_headers, "can_fetch", lambda: (False, "apt-get not found"))
    reg = load_registry()
    with pytest.raises(build.BuildError, match=r"cannot build vulkan: .*too old.*Fix:"):
        build.plan_build(reg.variants["vulkan"], reg, tmp_path, reg.sdist.sha256)


def test_the_headers_are_part_of_the_wheel_cache_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness.build import build

    use_system_headers(monkeypatch, write_header(tmp_path / "usr", 3, 239))
    fake_fetched(tmp_path / "cache", 4, 309)
    reg = load_registry()
    first = build.plan_build(reg.variants["vulkan"], reg, tmp_path, reg.sdist.sha256)
    assert "1.4.309" in first.inputs["toolchain"]["vulkan_headers"]
    fake_fetched(tmp_path / "cache", 4, 321)  # newer headers are preferred: another wheel
    second = build.plan_build(reg.variants["vulkan"], reg, tmp_path, reg.sdist.sha256)
    assert second.key != first.key


def test_a_bad_vulkan_headers_version_names_the_field(tmp_path: Path) -> None:
    user = tmp_path / "v.yaml"
    user.write_text(
        "variants:\n  vk:\n    backend: VULKAN\n    build_requires:\n      - vulkan_headers: new\n"
    )
    with pytest.raises(VariantError, match=r"field 'build_requires'.*MAJOR\.MINOR\.PATCH"):
        load_registry([user])


# --------------------------------------------------------------------------- devices


def test_llvmpipe_is_parsed_as_a_software_device() -> None:
    (dev,) = vulkan_devices.parse_summary(LLVMPIPE_ONLY)
    assert dev.index == 0 and dev.name.startswith("llvmpipe") and dev.software
    assert "software Vulkan device on the CPU, not a GPU" in dev.describe()


def test_a_gpu_next_to_llvmpipe_is_not_software() -> None:
    gpu, cpu = vulkan_devices.parse_summary(GPU_AND_LLVMPIPE)
    assert not gpu.software and cpu.software and cpu.index == 1


def fake_vulkaninfo(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    devices = tuple(vulkan_devices.parse_summary(text))
    monkeypatch.setattr(vulkan_devices, "list_devices", lambda: (devices, ""))


def test_only_llvmpipe_selects_it_for_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vulkaninfo(monkeypatch, LLVMPIPE_ONLY)
    assert vulkan_devices.runtime_env({}) == {"GGML_VK_VISIBLE_DEVICES": "0"}
    assert vulkan_devices.runtime_env({"GGML_VK_VISIBLE_DEVICES": "3"}) == {}  # user's choice
    ok, detail = vulkan_devices.probe()
    assert ok and "llvmpipe" in detail and "not a GPU" in detail
    assert get_variant("vulkan").runtime_env() == {"GGML_VK_VISIBLE_DEVICES": "0"}


def test_a_real_gpu_is_left_to_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_vulkaninfo(monkeypatch, GPU_AND_LLVMPIPE)
    assert vulkan_devices.runtime_env({}) == {}
    ok, detail = vulkan_devices.probe()
    assert ok and detail.startswith("NVIDIA H100") and "llvmpipe" not in detail


def test_no_vulkan_device_fails_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vulkan_devices, "list_devices", lambda: ((), "vulkaninfo not found"))
    assert vulkan_devices.probe() == (False, "vulkaninfo not found")
    assert vulkan_devices.runtime_env({}) == {}


def test_the_test_session_keeps_gemma_off_llvmpipe(monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import sessions

    fake_vulkaninfo(monkeypatch, LLVMPIPE_ONLY)
    monkeypatch.delenv("LLAMA_HARNESS_MODELS", raising=False)
    env = sessions.client_env(get_variant("vulkan"), "k", Path("w.whl"))
    assert env["GGML_VK_VISIBLE_DEVICES"] == "0"
    assert env["LLAMA_HARNESS_MODELS"] == "tiny"
    assert sessions.agree_models(env) == ["tiny"]
    fake_vulkaninfo(monkeypatch, GPU_AND_LLVMPIPE)
    env = sessions.client_env(get_variant("vulkan"), "k", Path("w.whl"))
    assert "GGML_VK_VISIBLE_DEVICES" not in env and "LLAMA_HARNESS_MODELS" not in env


def test_doctor_names_llvmpipe_a_software_device_not_a_gpu() -> None:
    from harness.doctor import doctor

    facts: dict[str, object] = {
        "llama.installed": True,
        "build.gpu_backends": ["VULKAN"],
        "build.gpu_offload": True,
        "build.gpu_devices": [],
        "vulkan.software_only": True,
        "vulkan.software_devices": ["llvmpipe (LLVM 15.0.6, 256 bits)"],
    }
    text = doctor.verdict(facts)
    assert "llvmpipe (LLVM 15.0.6, 256 bits), a software Vulkan device" in text
    assert "not a GPU" in text and "GGML_VK_VISIBLE_DEVICES=0" in text
    facts.update({"build.gpu_devices": ["llvmpipe (LLVM 15.0.6, 256 bits)"], "probe.ran": True,
                  "probe.offloaded": 3, "probe.total": 3})  # fmt: skip
    text = doctor.verdict(facts)
    assert text.startswith("VULKAN build, all 3/3 layers offloaded to llvmpipe")
    assert "software Vulkan device on the CPU: correct, but not a GPU" in text


def test_verify_names_the_device_and_says_llvmpipe_is_not_a_gpu() -> None:
    from harness.build.verify import Verification

    result = Verification(variant="vulkan", gpu_present=True)
    result.facts = {
        "compiled_backends": ["CPU", "VULKAN"],
        "devices": ["CPU:CPU (Intel Xeon)", "VULKAN:Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))"],
    }
    text = result.summary()
    assert "devices: VULKAN:Vulkan0 (llvmpipe (LLVM 15.0.6, 256 bits))" in text
    assert "a software Vulkan device on the CPU, not a GPU" in text and "CPU:CPU" not in text


def test_benchmarks_on_llvmpipe_run_the_reduced_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench-vulkan on llvmpipe: tiny model only, no 2,048-token stream, no ~1 GB GPU model;
    a real GPU (or the caller's LLAMA_HARNESS_BENCH_SET) keeps the full set."""
    from harness import sessions

    monkeypatch.delenv("LLAMA_HARNESS_BENCH_SET", raising=False)
    fake_vulkaninfo(monkeypatch, LLVMPIPE_ONLY)
    env = sessions.client_env(get_variant("vulkan"), "k", Path("w.whl"))
    assert env["LLAMA_HARNESS_BENCH_SET"] == "reduced"
    monkeypatch.setenv("LLAMA_HARNESS_BENCH_SET", "full")
    assert "LLAMA_HARNESS_BENCH_SET" not in sessions.client_env(
        get_variant("vulkan"), "k", Path("w.whl")
    )
    monkeypatch.delenv("LLAMA_HARNESS_BENCH_SET")
    fake_vulkaninfo(monkeypatch, GPU_AND_LLVMPIPE)
    env = sessions.client_env(get_variant("vulkan"), "k", Path("w.whl"))
    assert "LLAMA_HARNESS_BENCH_SET" not in env
