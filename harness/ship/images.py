"""The container images the project builds on, pinned by digest, and the NVIDIA driver they need.

One home for three facts that the Dockerfiles, the CI matrix, container mode and the doctor
all use:

* :data:`CUDA_VERSION`: the CUDA toolkit of the CUDA images (build and runtime stage of
  ``docker/Dockerfile.cuda``, the CI build container and the GPU runner's container);
* :data:`PINS`: every base image as ``<tag>@sha256:<digest>``. A tag can be re-pushed; a
  digest cannot, so a rebuild gets the same bytes. The Dockerfiles repeat these values as
  their ``ARG`` defaults (so a plain ``docker build`` works without the harness);
  ``tests/harness/test_dockerfiles.py`` fails when the two disagree or a pin is not a digest.
  ``llama-harness container pin`` resolves each tag through the Docker engine's registry
  access and rewrites the digest everywhere it appears (``docker/Dockerfile.*`` and this
  file); docs/CI.md says when to run it;
* :func:`driver_requirement`: the minimum Linux driver of a CUDA version, from NVIDIA's CUDA
  Toolkit release notes ("CUDA Toolkit and Corresponding Driver Versions", table 3). The
  CUDA images refuse to start on an older driver: their ``NVIDIA_REQUIRE_CUDA=cuda>=X.Y``
  makes ``nvidia-container-cli`` fail with "requirement error: unsatisfied condition:
  cuda>=X.Y, please update your driver" before any process runs in the container. The same
  variable lists driver branches on which data-centre and workstation GPUs (not GeForce) may
  start the image anyway, through CUDA forward compatibility (:data:`FORWARD_COMPAT_BRANCHES`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from harness import paths

#: The CUDA toolkit of every CUDA image (devel for builds, runtime for tests).
CUDA_VERSION = "12.8.1"
UBUNTU_VERSION = "24.04"

DIGEST_RE = re.compile(r"^(?P<tag>[^@\s]+:[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class ImagePin:
    """``tag`` pinned to ``digest`` (the registry's manifest-list digest of that tag)."""

    tag: str
    digest: str

    @property
    def ref(self) -> str:
        return f"{self.tag}@{self.digest}"


#: Base images by role. Digests as published for these tags (see docs/CI.md, "Pinned base
#: images", for how they were taken and how to refresh them).
PINS: dict[str, ImagePin] = {
    "debian": ImagePin(
        "debian:bookworm-20250520-slim",
        "sha256:90522eeb7e5923ee2b871c639059537b30521272f10ca86fdbbbb2b75a8c40cd",
    ),
    "cuda-devel": ImagePin(
        f"nvidia/cuda:{CUDA_VERSION}-devel-ubuntu{UBUNTU_VERSION}",
        "sha256:520292dbb4f755fd360766059e62956e9379485d9e073bbd2f6e3c20c270ed66",
    ),
    "cuda-runtime": ImagePin(
        f"nvidia/cuda:{CUDA_VERSION}-runtime-ubuntu{UBUNTU_VERSION}",
        "sha256:ebef3c171eeef0298e4eb2e4be843105edf3b8b0ac45e0b43acee358e8046867",
    ),
}

#: Files that repeat the pins (``llama-harness container pin`` rewrites them all).
PINNED_FILES = (
    paths.PROJECT_ROOT / "docker" / "Dockerfile.cpu",
    paths.PROJECT_ROOT / "docker" / "Dockerfile.cuda",
    Path(__file__),
)

#: Minimum Linux x86_64 driver per CUDA (major, minor, update), from NVIDIA's CUDA Toolkit
#: release notes, table 3 ("Toolkit Driver Version"). Newer toolkits: add their row.
MIN_LINUX_DRIVER: dict[tuple[int, int, int], str] = {
    (12, 0, 0): "525.60.13",
    (12, 0, 1): "525.85.12",
    (12, 1, 0): "530.30.02",
    (12, 1, 1): "530.30.02",
    (12, 2, 0): "535.54.03",
    (12, 2, 1): "535.86.09",
    (12, 2, 2): "535.104.05",
    (12, 3, 0): "545.23.06",
    (12, 3, 1): "545.23.08",
    (12, 3, 2): "545.23.08",
    (12, 4, 0): "550.54.14",
    (12, 4, 1): "550.54.15",
    (12, 5, 0): "555.42.02",
    (12, 5, 1): "555.42.06",
    (12, 6, 0): "560.28.03",
    (12, 6, 1): "560.35.03",
    (12, 6, 2): "560.35.03",
    (12, 6, 3): "560.35.05",
    (12, 8, 0): "570.26",
    (12, 8, 1): "570.124.06",
    (12, 9, 0): "575.51.03",
    (12, 9, 1): "575.57.08",
    (13, 0, 0): "580.65.06",
}
RELEASE_NOTES = "https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/index.html"

#: The other alternatives of the CUDA X.Y images' NVIDIA_REQUIRE_CUDA: ``brand=B,driver>=N,
#: driver<N+1`` for the brands unknown, grid, tesla, nvidia, quadro, quadrortx, nvidiartx and
#: the virtual-GPU ones (never geforce) on these driver branches N. There the image starts on
#: an older driver and runs CUDA X.Y through forward compatibility (the images ship the
#: cuda-compat package; NVIDIA supports it on data-centre and some workstation GPUs only).
#: Source: the image's configuration (nvidia/cuda Dockerfiles, gitlab.com/nvidia/container-
#: images/cuda, dist/12.8.*/ubuntu2404/base/Dockerfile) and FORWARD_COMPAT_DOCS.
FORWARD_COMPAT_BRANCHES: dict[tuple[int, int], tuple[int, ...]] = {
    (12, 8): (470, 535, 550, 560, 565),
}
FORWARD_COMPAT_DOCS = "https://docs.nvidia.com/deploy/cuda-compatibility/"


def _version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        raise ValueError(f"CUDA version {text!r} is not MAJOR.MINOR[.UPDATE]")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def min_driver(cuda_version: str) -> str | None:
    """Minimum Linux driver for ``cuda_version`` ("12.8" means 12.8.0); None if unknown.

    A version between two rows takes the row below it (e.g. 12.4.2 -> 12.4.1's driver).
    """
    want = _version(cuda_version)
    known = [v for v in sorted(MIN_LINUX_DRIVER) if v <= want and v[:2] == want[:2]]
    return MIN_LINUX_DRIVER[known[-1]] if known else None


def driver_requirement(cuda_version: str = CUDA_VERSION) -> str:
    """The one sentence every place states: which driver a CUDA image needs, and why.

    The minimum is NVIDIA's (:data:`MIN_LINUX_DRIVER`); a GeForce GPU needs it, and a
    data-centre or workstation GPU also starts the image on the forward-compatibility
    branches of :data:`FORWARD_COMPAT_BRANCHES`, named when the version has any.

    >>> driver_requirement("12.8.1")  # doctest: +ELLIPSIS
    'NVIDIA driver 570.124.06 or newer (R570+, nvidia-smi "CUDA Version" >= 12.8) ...'
    """
    major, minor, _ = _version(cuda_version)
    driver = min_driver(cuda_version)
    branch = f"R{driver.split('.')[0]}+, " if driver else ""
    need = f"NVIDIA driver {driver} or newer" if driver else "an NVIDIA driver"
    text = (
        f'{need} ({branch}nvidia-smi "CUDA Version" >= {major}.{minor}) for the CUDA '
        f"{cuda_version} images: their NVIDIA_REQUIRE_CUDA=cuda>={major}.{minor} makes the "
        "NVIDIA container runtime refuse to start them on an older driver"
    )
    compat = FORWARD_COMPAT_BRANCHES.get((major, minor))
    if compat:
        listed = ", ".join(f"R{b}" for b in compat)
        text += (
            " (data-centre and workstation GPUs, not GeForce, also start them on the "
            f"forward-compatibility branches {listed})"
        )
    return text


def refused_requirement(required: str) -> str:
    """:func:`driver_requirement` for a refusal's ``cuda>=X.Y``: this project's CUDA version
    when X.Y is its major.minor (the image was most likely ours), else X.Y itself."""
    ours = ".".join(CUDA_VERSION.split(".")[:2])
    return driver_requirement(CUDA_VERSION if required.strip() == ours else required)


def pinned_refs(text: str) -> list[str]:
    """Every ``<tag>@sha256:<digest>`` reference in ``text``."""
    return re.findall(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", text)


def repin(text: str, tag: str, digest: str) -> str:
    """``text`` with every ``<tag>@sha256:<old>`` replaced by ``<tag>@<digest>``."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ValueError(f"{digest!r} is not a sha256 digest")
    return re.sub(re.escape(tag) + r"@sha256:[0-9a-f]{64}", f"{tag}@{digest}", text)
