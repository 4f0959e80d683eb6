"""The build-variant registry: the built-in file, user files, extends, validation, checks."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from harness.build.variants import (
    BUILTIN_FILE,
    Requirement,
    VariantError,
    get_variant,
    load_registry,
    load_variants,
    platform_tag,
)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(autouse=True)
def no_user_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LLAMA_HARNESS_VARIANTS", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def test_builtin_registry_has_the_issue_variants() -> None:
    reg = load_registry()
    variants = reg.variants
    assert {"cpu", "cpu-native", "cpu-openblas", "cuda", "metal", "vulkan"} <= set(variants)
    assert variants["cpu"].cmake_args == ("-DGGML_NATIVE=OFF",)
    assert variants["cpu"].backend == "CPU" and not variants["cpu"].gpu
    assert "-DGGML_NATIVE=OFF" not in variants["cpu-native"].cmake_args
    assert variants["cpu-native"].default is False
    assert variants["cuda"].backend == "CUDA" and variants["cuda"].gpu
    assert variants["cuda"].toolchain == "cuda"
    assert "-DGGML_CUDA=on" in variants["cuda"].cmake_args
    assert variants["metal"].platforms == ("darwin-arm64",)
    assert variants["cpu-openblas"].backend == "BLAS"
    assert "-DGGML_BLAS_VENDOR=OpenBLAS" in variants["cpu-openblas"].cmake_args
    assert reg.sdist.version == "0.3.36" and len(reg.sdist.sha256) == 64
    assert reg.files == (BUILTIN_FILE,)


def test_every_builtin_variant_names_fixes_for_its_checks() -> None:
    for variant in load_variants().values():
        for req in (*variant.build_requires, *variant.runtime_requires):
            assert req.fix, f"{variant.name}: check {req.label()} has no fix text"


def test_user_file_adds_a_variant_that_extends_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = write(
        tmp_path / "mine.yaml",
        """
        variants:
          cuda-sm90:
            extends: cuda
            description: H100 only
            cmake_args: [-DCMAKE_CUDA_ARCHITECTURES=90]
            tags: [hopper]
        """,
    )
    monkeypatch.setenv("LLAMA_HARNESS_VARIANTS", str(user))
    reg = load_registry()
    v = reg.variants["cuda-sm90"]
    assert reg.files == (BUILTIN_FILE, user)
    assert v.cmake_args[: len(reg.variants["cuda"].cmake_args)] == reg.variants["cuda"].cmake_args
    assert v.cmake_args[-1] == "-DCMAKE_CUDA_ARCHITECTURES=90"
    assert v.backend == "CUDA" and v.gpu and v.toolchain == "cuda"
    assert v.description == "H100 only"
    assert v.extends == "cuda" and v.source == user
    assert {"hopper", "nvidia", "gpu", "cuda-sm90"} <= set(v.tag_list())
    assert v.runtime_requires == reg.variants["cuda"].runtime_requires


def test_user_file_in_xdg_config_is_found_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "config" / "llama-harness"
    folder.mkdir(parents=True)
    write(
        folder / "variants.yaml",
        """
        variants:
          cpu:
            backend: CPU
            cmake_args: [-DGGML_NATIVE=OFF, -DGGML_AVX512=ON]
        """,
    )
    assert get_variant("cpu").cmake_args == ("-DGGML_NATIVE=OFF", "-DGGML_AVX512=ON")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("backend: TPU", "backend", "unknown or missing backend"),
        ("backend: CPU\n    gpu: maybe", "gpu", "true or false"),
        ("backend: CPU\n    cmake_arg: [-DX=1]", "cmake_arg", "unknown field"),
        ("backend: CPU\n    cmake_args: [-DGGML_CUDA]", "cmake_args", "NAME=VALUE"),
        ("backend: CPU\n    toolchain: rocm", "toolchain", "unknown toolchain"),
        ("backend: CPU\n    build_requires: [{command: cc, file: x}]", "build_requires", "exactly"),
        ("backend: CPU\n    runtime_requires: [{probe: tpu}]", "runtime_requires", "probe"),
        ("extends: nothing-here", "extends", "unknown variant"),
    ],
)
def test_bad_variant_fields_name_file_variant_field_and_fix(
    tmp_path: Path, body: str, field: str, words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("variants:\n  mine:\n    " + body + "\n")
    with pytest.raises(VariantError) as info:
        load_registry([BUILTIN_FILE, path])
    err = info.value
    assert err.file == path and err.variant == "mine" and err.field == field
    assert err.fix
    text = str(err)
    assert str(path) in text and "'mine'" in text and words in text and "Fix:" in text


def test_extends_cycle_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cycle.yaml",
        """
        variants:
          a: {extends: b, backend: CPU}
          b: {extends: a, backend: CPU}
        """,
    )
    with pytest.raises(VariantError, match="cycle"):
        load_registry([BUILTIN_FILE, path])


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("variants:\n  cpu: [unclosed\n")
    with pytest.raises(VariantError, match="not valid YAML") as info:
        load_registry([BUILTIN_FILE, bad])
    assert info.value.file == bad
    with pytest.raises(VariantError, match="cannot read"):
        load_registry([tmp_path / "absent.yaml"])


def test_bad_sdist_pin(tmp_path: Path) -> None:
    path = write(tmp_path / "pin.yaml", "sdist: {version: '1', filename: x.tar.gz, sha256: abc}\n")
    with pytest.raises(VariantError, match=r"sdist\.sha256"):
        load_registry([path])


def test_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(VariantError, match="cpu-native") as info:
        get_variant("cuda12")
    assert "llama-harness variants" in info.value.fix


def test_requirement_checks_are_real(tmp_path: Path) -> None:
    sh = Requirement(kind="command", value=("sh",))
    assert sh.check().ok and sh.check().detail == shutil.which("sh")
    missing = Requirement(kind="command", value=("surely-not-a-command-xyz",), fix="install it")
    result = missing.check()
    assert not result.ok and "not found on PATH" in result.detail and result.fix == "install it"
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "cblas.h").write_text("")
    found = Requirement(kind="file", value=(str(tmp_path / "*" / "cblas.h"),))
    assert found.check().ok and found.check().detail.endswith("cblas.h")
    assert not Requirement(kind="file", value=(str(tmp_path / "nope.h"),)).check().ok
    pkg = Requirement(kind="pkg_config", value=("surely-not-a-package-xyz",))
    assert not pkg.check().ok
    either = Requirement(kind="any_of", options=(missing, found), what="headers", fix="f")
    assert either.check().ok and either.check().what == "headers"
    neither = Requirement(kind="any_of", options=(missing, pkg), fix="f")
    assert not neither.check().ok


def test_skip_reason_for_another_platform(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.yaml",
        """
        variants:
          elsewhere: {backend: CPU, platforms: [plan9-mips]}
          needs-tool:
            backend: CPU
            build_requires:
              - command: surely-not-a-command-xyz
                what: the xyz compiler
                fix: apt-get install xyz
        """,
    )
    variants = load_variants([BUILTIN_FILE, path])
    reason = variants["elsewhere"].skip_reason()
    assert reason is not None and "plan9-mips" in reason and platform_tag() in reason
    reason = variants["needs-tool"].skip_reason()
    assert reason is not None and "the xyz compiler" in reason and "apt-get install xyz" in reason


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux platform tags")
def test_platform_tag_and_metal_is_not_buildable_on_linux() -> None:
    assert platform_tag().startswith("linux-")
    metal = get_variant("metal")
    assert not metal.supports_platform()
    reason = metal.skip_reason()
    assert reason is not None and reason.startswith("metal: builds on darwin-arm64")


@pytest.mark.parametrize(
    ("machine", "vm", "displays", "ok", "says"),
    [
        ("arm64", False, "Chipset Model: Apple M2 Pro\n  Type: GPU", True, "Apple Silicon"),
        ("arm64", False, "Chipset Model: Apple Paravirtual device", False, "Paravirtual"),
        ("arm64", True, "", False, "virtual machine"),
        ("x86_64", False, "", False, "Rosetta"),
    ],
)
def test_apple_gpu_probe_sees_the_hosted_macos_vm(
    machine: str, vm: bool, displays: str, ok: bool, says: str
) -> None:
    """GitHub's macOS runners are VMs whose GPU is the Apple Paravirtual device (no
    simdgroup/MPS support; llama.cpp#8617): no Metal GPU there, and the reason says so."""
    from harness.build.variants import apple_gpu_verdict

    found, reason = apple_gpu_verdict(machine, vm, displays)
    assert found is ok
    assert says in reason
