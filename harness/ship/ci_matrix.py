"""The GitHub Actions matrix, computed from the variant registry.

``.github/workflows/ci.yml`` runs ``llama-harness matrix --github-output "$GITHUB_OUTPUT"``
in its first job and feeds the result to ``strategy.matrix`` with ``fromJSON``, so adding a
variant to ``harness/build/variants.yaml`` (or a user variants file) adds it to CI with no edit to
the workflow. This module is pure: variants in, matrix out.

Every variant lands in one of two places (or both, see Vulkan below):

* ``test``: built once, then tested (``nox -s test-<v>``) and benchmarked (``nox -s
  bench-<v>``) in ONE job on a GitHub-hosted runner, so test and bench use the same wheel on
  the same VM. CPU variants go to ``ubuntu-latest``; Metal to ``macos-15`` (Apple Silicon).
  GitHub's macOS VMs expose only the "Apple Paravirtual device" (no simdgroup/MPS support):
  the ``apple-gpu`` probe says so, the session stops after verifying the build with
  "built-no-gpu" and the reason, and that status is accepted there with a warning, never on
  the GPU runner.
* ``build`` + ``gpu``: variants whose GPU no hosted runner has (CUDA, ...). ``build``
  compiles the wheel on a hosted runner (CUDA inside the pinned ``nvidia/cuda`` devel image)
  and uploads it as an artifact; ``gpu`` downloads it on a self-hosted runner labelled ``gpu``
  and runs ``nox -s test-<v> -- --wheel <path>`` there (push, schedule and manual runs only,
  never pull requests: docs/CI.md).
* both, when a plain hosted runner has the backend's device in software: Vulkan runs on
  Mesa's llvmpipe (a Vulkan device on the CPU) in a hosted variant job, which proves that the
  build compiles, offloads every layer to a Vulkan device and answers correctly (not GPU
  speed); the GPU runner tests it on a real GPU (``BackendProfile.software_device``).

The runner comes from the variant's ``platforms`` (the first hosted-runner platform its globs
match, Linux first); the containers and packages from its ``backend``. A variant may override
any of that with a ``ci:`` mapping (keys: ``runs_on``, ``container``, ``packages``,
``gpu_runs_on``, ``gpu_container``, ``gpu_container_options``, ``experimental``) when the
registry passes one through (``Variant.ci``; ``harness.build.variants`` does not accept the field
yet). Variants kept out of plain ``nox`` (``default: false``, e.g. cpu-native) are
``experimental``: their jobs run and show failures without failing the workflow.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from harness.ship import images

#: The Python the hosted jobs install (the noxfile's session Python).
HOSTED_PYTHON = "3.11"

#: The CUDA images of the build job and of the GPU runner's job, pinned by digest
#: (harness/ship/images.py is their one home). The runtime image carries the CUDA runtime and
#: cuBLAS the wheel links to; the host needs only the NVIDIA Container Toolkit and a driver
#: new enough for CUDA_VERSION (images.driver_requirement()).
CUDA_VERSION = images.CUDA_VERSION
CUDA_BUILD_IMAGE = images.PINS["cuda-devel"].ref
CUDA_RUNTIME_IMAGE = images.PINS["cuda-runtime"].ref
#: The Python of those Ubuntu 24.04 images (apt's python3), which runs nox there.
CONTAINER_PYTHON = "3.12"

#: The self-hosted runner labels of the GPU jobs (docs/CI.md: how to register one).
GPU_RUNS_ON: tuple[str, ...] = ("self-hosted", "gpu")

#: Hosted runners by platform, in order of preference when a variant matches several.
#: Versioned labels (not -latest) so a runner-image switch is a visible change here; the
#: retired ones are refused below (RETIRED_RUNNER_LABELS).
HOSTED_RUNNERS: tuple[tuple[str, str], ...] = (
    ("linux-x86_64", "ubuntu-latest"),
    ("darwin-arm64", "macos-15"),
    ("linux-aarch64", "ubuntu-24.04-arm"),
    ("darwin-x86_64", "macos-15-intel"),
    ("windows-x86_64", "windows-latest"),
)


@dataclass(frozen=True)
class RetiredLabel:
    """A GitHub-hosted runner label that no longer gets a runner."""

    retired: str  # date the image was removed (jobs then wait and fail)
    use: str  # the label to move to
    source: str  # the actions/runner-images announcement


#: THE list of retired runner labels: the matrix refuses them (a registry `ci:` override too),
#: and tests/harness/test_ci_model.py checks every label of the workflows and docs against it.
RETIRED_RUNNER_LABELS: Mapping[str, RetiredLabel] = {
    "macos-14": RetiredLabel(
        "2026-11-02", "macos-15", "https://github.com/actions/runner-images/issues/13518"
    ),
    "macos-14-large": RetiredLabel(
        "2026-11-02", "macos-15-large", "https://github.com/actions/runner-images/issues/13518"
    ),
    "macos-14-xlarge": RetiredLabel(
        "2026-11-02", "macos-15-xlarge", "https://github.com/actions/runner-images/issues/13518"
    ),
    "macos-13": RetiredLabel(
        "2025-12-04", "macos-15-intel", "https://github.com/actions/runner-images/issues/13046"
    ),
    "macos-13-large": RetiredLabel(
        "2025-12-04", "macos-15-large", "https://github.com/actions/runner-images/issues/13046"
    ),
    "macos-13-xlarge": RetiredLabel(
        "2025-12-04", "macos-15-xlarge", "https://github.com/actions/runner-images/issues/13046"
    ),
    "macos-12": RetiredLabel(
        "2024-12-03", "macos-15", "https://github.com/actions/runner-images/issues/10721"
    ),
    "macos-11": RetiredLabel(
        "2024-06-28",
        "macos-15",
        ""
        "https://github.blog/changelog/2024-05-20-actions-upcoming-changes-to-github-hosted-macos-runners/",
    ),
    "ubuntu-20.04": RetiredLabel(
        "2025-04-15", "ubuntu-24.04", "https://github.com/actions/runner-images/issues/11101"
    ),
    "ubuntu-18.04": RetiredLabel(
        "2023-04-01", "ubuntu-24.04", "https://github.com/actions/runner-images/issues/6002"
    ),
    "windows-2019": RetiredLabel(
        "2025-06-30", "windows-2025", "https://github.com/actions/runner-images/issues/12045"
    ),
}


def retired(label: str) -> RetiredLabel | None:
    """The retirement notice of a runner label, or None while it gets runners."""
    return RETIRED_RUNNER_LABELS.get(label.strip().lower())


#: Backends whose device hosted runners have: the CPU itself, and Metal on macos-15 (arm64;
#: on GitHub's VMs only the paravirtual GPU, see the module docstring).
HOSTED_BACKENDS = frozenset({"CPU", "BLAS", "METAL"})


@dataclass(frozen=True)
class BackendProfile:
    """How CI builds and runs one backend."""

    build_container: str = ""
    #: Labels of the self-hosted runner that tests the wheel (variants with a GPU).
    gpu_runs_on: tuple[str, ...] = GPU_RUNS_ON
    gpu_container: str = ""
    gpu_container_options: str = ""
    #: Packages the build needs, by runner OS (``Linux`` -> apt, ``macOS`` -> brew).
    packages: Mapping[str, str] = field(default_factory=dict)
    #: A device of this backend that a plain hosted runner has in software, by runner OS
    #: (Vulkan: Mesa's llvmpipe on Linux): then the variant ALSO gets a hosted variant job
    #: that runs it there, with these packages added (the device's driver and tools).
    software_device: Mapping[str, tuple[str, str]] = field(default_factory=dict)


BACKEND_PROFILES: Mapping[str, BackendProfile] = {
    "CPU": BackendProfile(),
    "BLAS": BackendProfile(packages={"Linux": "libopenblas-dev", "macOS": "openblas"}),
    "METAL": BackendProfile(),
    "CUDA": BackendProfile(
        build_container=CUDA_BUILD_IMAGE,
        gpu_container=CUDA_RUNTIME_IMAGE,
        gpu_container_options="--gpus all",
    ),
    # llama.cpp's ggml-vulkan needs the loader headers, glslc and SPIRV-Headers' CMake config.
    # Mesa's llvmpipe is a Vulkan device on the CPU: a plain ubuntu runner builds the wheel,
    # offloads every layer to that device (GGML_VK_VISIBLE_DEVICES selects it, harness/
    # vulkan_devices.py) and checks the answers; a real GPU is the self-hosted runner's job.
    "VULKAN": BackendProfile(
        packages={"Linux": "libvulkan-dev glslc spirv-headers"},
        software_device={"Linux": ("Mesa llvmpipe", "mesa-vulkan-drivers vulkan-tools")},
    ),
}

CI_OVERRIDE_KEYS = frozenset(
    {
        "runs_on",
        "container",
        "packages",
        "gpu_runs_on",
        "gpu_container",
        "gpu_container_options",
        "experimental",
    }
)


class MatrixError(ValueError):
    """A variant CI cannot place; names the variant, the field, the value and the fix."""

    def __init__(self, variant: str, field_name: str, value: object, fix: str) -> None:
        self.variant = variant
        self.field = field_name
        self.value = value
        self.fix = fix
        super().__init__(f"variant {variant!r}: {field_name} = {value!r}: {fix}")


@dataclass(frozen=True)
class VariantSpec:
    """What the matrix needs from a registry variant."""

    name: str
    backend: str
    gpu: bool
    platforms: tuple[str, ...]
    default: bool = True
    ci: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_variant(cls, variant: object) -> VariantSpec:
        """Read a :class:`harness.build.variants.Variant` (or anything with those attributes)."""
        if isinstance(variant, VariantSpec):
            return variant
        name = getattr(variant, "name", None)
        if not isinstance(name, str) or not name:
            raise MatrixError(str(variant), "name", name, "a variant needs a non-empty name")
        backend = getattr(variant, "backend", None) or getattr(variant, "expected_backend", "")
        ci = getattr(variant, "ci", None) or {}
        if not isinstance(ci, Mapping):
            raise MatrixError(name, "ci", ci, "write `ci:` as a mapping, e.g. {runs_on: ...}")
        return cls(
            name=name,
            backend=str(backend).upper(),
            gpu=bool(getattr(variant, "gpu", False)),
            platforms=tuple(str(p) for p in getattr(variant, "platforms", ()) or ()),
            default=bool(getattr(variant, "default", True)),
            ci=dict(ci),
        )


RunsOn = str | tuple[str, ...]


@dataclass(frozen=True)
class MatrixEntry:
    """One job of the matrix; every value is what the workflow reads as ``matrix.<key>``."""

    variant: str
    backend: str
    platform: str
    runs_on: RunsOn
    container: str = ""
    container_options: str = ""
    #: Python that setup-python installs (no container) or the container's python3.
    python: str = HOSTED_PYTHON
    packages: str = ""
    #: Session statuses (reports/<v>/status.json) accepted besides "passed", with a warning:
    #: "built-no-gpu" where a hosted runner may lack the device (Metal on a macOS VM).
    allow_status: str = ""
    #: A failure shows but does not fail the run (variants kept out of plain ``nox``).
    experimental: bool = False
    #: The device the job runs the variant on when it is not the real one, e.g. "Mesa
    #: llvmpipe" for Vulkan on a hosted runner ('' otherwise); shown in the job name.
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        runs_on: Any = list(self.runs_on) if isinstance(self.runs_on, tuple) else self.runs_on
        return {
            "variant": self.variant,
            "backend": self.backend,
            "platform": self.platform,
            "runs_on": runs_on,
            "container": self.container,
            "container_options": self.container_options,
            "python": self.python,
            "packages": self.packages,
            "allow_status": self.allow_status,
            "experimental": self.experimental,
            "device": self.device,
        }


@dataclass(frozen=True)
class CIMatrix:
    """The three matrices of ``ci.yml``."""

    variants: tuple[str, ...]
    test: tuple[MatrixEntry, ...]
    build: tuple[MatrixEntry, ...]
    gpu: tuple[MatrixEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "variants": list(self.variants),
            "test": {"include": [e.to_json() for e in self.test]},
            "build": {"include": [e.to_json() for e in self.build]},
            "gpu": {"include": [e.to_json() for e in self.gpu]},
        }

    def github_outputs(self) -> dict[str, str]:
        """The job outputs of the matrix job (``name=value`` lines for ``$GITHUB_OUTPUT``).

        GitHub rejects a matrix with an empty ``include``, so each group also gets a
        ``has_<group>`` flag the jobs test in their ``if:``.
        """
        doc = self.to_json()
        out: dict[str, str] = {"variants": _compact(doc["variants"])}
        for group in ("test", "build", "gpu"):
            out[group] = _compact(doc[group])
            out[f"has_{group}"] = "true" if doc[group]["include"] else "false"
        out["gpu_variants"] = " ".join(e.variant for e in self.gpu)
        return out


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)


def hosted_platform(spec: VariantSpec) -> tuple[str, str] | None:
    """The first (platform, hosted runner) whose platform the variant's globs match."""
    for platform, runner in HOSTED_RUNNERS:
        if any(fnmatch.fnmatchcase(platform, glob) for glob in spec.platforms):
            return platform, runner
    return None


def _runner_os(runner: RunsOn) -> str:
    label = runner if isinstance(runner, str) else " ".join(runner)
    if "macos" in label:
        return "macOS"
    if "windows" in label:
        return "Windows"
    return "Linux"


def _runs_on(spec: VariantSpec, key: str, value: object) -> RunsOn:
    labels: RunsOn
    if isinstance(value, str) and value:
        labels = value
    elif isinstance(value, Sequence) and value and all(isinstance(v, str) and v for v in value):
        labels = tuple(str(v) for v in value)
    else:
        raise MatrixError(
            spec.name,
            f"ci.{key}",
            value,
            "give a runner label or a list of labels, e.g. [self-hosted, gpu]",
        )
    check_labels(spec.name, f"ci.{key}", labels)
    return labels


def check_labels(variant: str, field_name: str, labels: RunsOn) -> None:
    """MatrixError when a label is retired (RETIRED_RUNNER_LABELS): the job would never run."""
    for label in (labels,) if isinstance(labels, str) else labels:
        notice = retired(label)
        if notice is not None:
            raise MatrixError(
                variant,
                field_name,
                label,
                f"GitHub retired the {label!r} runners on {notice.retired} ({notice.source}); "
                f"jobs on it get no runner: use {notice.use!r}",
            )


def _str(spec: VariantSpec, key: str, default: str) -> str:
    value = spec.ci.get(key, default)
    if not isinstance(value, str):
        raise MatrixError(spec.name, f"ci.{key}", value, "write it as a string ('' for none)")
    return value


def entries_for(
    spec: VariantSpec,
) -> tuple[MatrixEntry | None, MatrixEntry | None, MatrixEntry | None]:
    """(test, build, gpu) entries of one variant: test (a hosted job builds, tests and
    benchmarks it), or build and gpu (compiled on a hosted runner, tested on the GPU runner),
    or all three when a hosted runner has the backend's device in software (Vulkan on
    llvmpipe)."""
    unknown = sorted(set(spec.ci) - CI_OVERRIDE_KEYS)
    if unknown:
        raise MatrixError(
            spec.name,
            f"ci.{unknown[0]}",
            spec.ci[unknown[0]],
            f"known keys are {', '.join(sorted(CI_OVERRIDE_KEYS))}",
        )
    profile = BACKEND_PROFILES.get(spec.backend)
    if profile is None:
        raise MatrixError(
            spec.name,
            "backend",
            spec.backend,
            f"CI knows {', '.join(sorted(BACKEND_PROFILES))}; add a BackendProfile for it "
            "(build container, GPU container, packages) to BACKEND_PROFILES in "
            "harness/ship/ci_matrix.py",
        )
    placed = hosted_platform(spec)
    if "runs_on" in spec.ci:
        runs_on = _runs_on(spec, "runs_on", spec.ci["runs_on"])
        platform = placed[0] if placed else "custom"
    elif placed is not None:
        platform, runs_on = placed
        check_labels(spec.name, "platforms", runs_on)
    else:
        raise MatrixError(
            spec.name,
            "platforms",
            list(spec.platforms),
            "no GitHub-hosted runner matches; list one of "
            f"{', '.join(p for p, _ in HOSTED_RUNNERS)} in the variant's platforms, or map "
            "the platform to a runner label in HOSTED_RUNNERS (harness/ship/ci_matrix.py)",
        )
    experimental = spec.ci.get("experimental", not spec.default)
    if not isinstance(experimental, bool):
        raise MatrixError(spec.name, "ci.experimental", experimental, "write true or false")
    container = _str(spec, "container", profile.build_container)
    packages = _str(spec, "packages", profile.packages.get(_runner_os(runs_on), ""))
    entry = MatrixEntry(
        variant=spec.name,
        backend=spec.backend,
        platform=platform,
        runs_on=runs_on,
        container=container,
        python=CONTAINER_PYTHON if container else HOSTED_PYTHON,
        packages=packages,
        experimental=experimental,
    )
    if not spec.gpu:
        return entry, None, None
    if spec.backend in HOSTED_BACKENDS:
        return replace(entry, allow_status="built-no-gpu"), None, None
    gpu_runs_on = _runs_on(spec, "gpu_runs_on", spec.ci.get("gpu_runs_on", profile.gpu_runs_on))
    gpu_container = _str(spec, "gpu_container", profile.gpu_container)
    gpu_entry = MatrixEntry(
        variant=spec.name,
        backend=spec.backend,
        platform=platform,
        runs_on=gpu_runs_on,
        container=gpu_container,
        container_options=_str(spec, "gpu_container_options", profile.gpu_container_options),
        python=CONTAINER_PYTHON if gpu_container else HOSTED_PYTHON,
        packages="",
        experimental=experimental,
    )
    hosted: MatrixEntry | None = None
    soft = profile.software_device.get(_runner_os(runs_on))
    if soft is not None:
        device, extra = soft
        hosted = replace(entry, packages=" ".join(filter(None, (packages, extra))), device=device)
    return hosted, entry, gpu_entry


def compute_matrix(variants: Iterable[object]) -> CIMatrix:
    """The CI matrix of these variants (registry order kept; one job per variant)."""
    names: list[str] = []
    test: list[MatrixEntry] = []
    build: list[MatrixEntry] = []
    gpu: list[MatrixEntry] = []
    for variant in variants:
        spec = VariantSpec.from_variant(variant)
        if spec.name in names:
            raise MatrixError(spec.name, "name", spec.name, "variant names must be unique")
        names.append(spec.name)
        t, b, g = entries_for(spec)
        for group, entry in ((test, t), (build, b), (gpu, g)):
            if entry is not None:
                group.append(entry)
    return CIMatrix(tuple(names), tuple(test), tuple(build), tuple(gpu))


def format_github_outputs(outputs: Mapping[str, str]) -> str:
    """``name=value`` lines; values are single-line JSON or words, so no heredoc is needed."""
    lines = []
    for name, value in outputs.items():
        if "\n" in value:
            raise ValueError(f"output {name!r} spans lines; GitHub needs a delimiter for that")
        lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"
