"""Container mode: run a variant's Nox session inside an image built from ``docker/``.

``nox -s test-<variant> -- --container`` calls :func:`run_session_in_container`, which

1. picks the Dockerfile for the variant's backend (``docker/Dockerfile.cpu`` for CPU/BLAS,
   ``docker/Dockerfile.cuda`` for CUDA; Metal has no container: macOS GPUs are not
   reachable from Linux containers) and its build args (CMAKE_ARGS from the registry,
   CUDA architectures, base images);
2. stages a clean build context (the project's files, the pinned sdist from the harness
   cache, a wheel given with ``--wheel``, extra CA certificates) and derives the image tag
   from the hash of the Dockerfile, the build args and the staged files;
3. reuses that image when the engine has it, else builds it with the classic builder
   through the Docker SDK (``docker`` package), streaming the build log;
4. runs ``nox -s <session>`` inside with the GPU requested for GPU variants
   (``device_requests`` with capability ``gpu``), the Hugging Face cache, the harness model
   cache and the report folder mounted, the log streamed and the exit status returned.

``DOCKER_HOST`` is honoured (``docker.from_env``). A missing engine, a missing NVIDIA
container runtime and a registry that cannot be reached each end in a :class:`ContainerError`
that says which and how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import paths
from saiverse_llm.cli_errors import error_line_of

DOCKER_DIR = paths.PROJECT_ROOT / "docker"
DOCKERFILES = {"CPU": "Dockerfile.cpu", "BLAS": "Dockerfile.cpu", "CUDA": "Dockerfile.cuda"}
# Extra distribution packages a backend needs, passed as build args.
BACKEND_PACKAGES = {
    "BLAS": {"EXTRA_BUILD_PACKAGES": "libopenblas-dev", "EXTRA_RUNTIME_PACKAGES": "libopenblas0"}
}
NO_CONTAINER = {
    "METAL": "Metal has no container: Docker on macOS runs a Linux VM that cannot reach the "
    "Apple GPU; run `nox -s test-metal` natively on an Apple Silicon Mac",
    "VULKAN": "there is no Dockerfile for Vulkan yet; run `nox -s test-vulkan` natively",
}
CONTEXT_DIRS = ("docker/sdist", "docker/wheels", "docker/certs")
CA_DIRS = (Path("/usr/local/share/ca-certificates"),)
IMAGE_REPO = "llama-harness"
CONTAINER_WORKDIR = "/workspace"
GPU_DRIVER_ERROR = 'could not select device driver "" with capabilities: [[gpu]]'
FIX_ENGINE = (
    "fix: start Docker (sudo systemctl start docker), or run a private engine with "
    '`eval "$(scripts/docker-engine.sh start)"`, or point DOCKER_HOST at a running engine'
)
FIX_NVIDIA = (
    "fix: install the NVIDIA Container Toolkit on the Docker host "
    "(apt-get install nvidia-container-toolkit), then `sudo nvidia-ctk runtime configure "
    "--runtime=docker && sudo systemctl restart docker`; check with "
    "`docker run --rm --gpus all <image> nvidia-smi`"
)
FIX_REGISTRY = (
    "fix: no registry reachable for the base image: make one locally with "
    "`scripts/make-base-image.sh` and set LLAMA_HARNESS_BASE_IMAGE=local/bookworm-minbase "
    "(CPU), or `docker load` the base image from a file"
)

Log = Callable[[str], None]


class ContainerError(RuntimeError):
    """Container mode cannot go on; the message names the cause and the fix."""


def _print(line: str) -> None:
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class SessionArgs:
    """The session's posargs split into what container mode uses and what goes inside."""

    wheel: Path | None
    inner: tuple[str, ...]


def split_posargs(posargs: Sequence[str]) -> SessionArgs:
    """Drop ``--container``; take ``--wheel PATH`` (that wheel goes into the image)."""
    inner: list[str] = []
    wheel: Path | None = None
    items = list(posargs)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--container":
            pass
        elif arg == "--wheel":
            if i + 1 >= len(items):
                raise ContainerError("--wheel needs a path: --wheel dist/llama_cpp_python-*.whl")
            wheel = Path(items[i + 1])
            i += 1
        elif arg.startswith("--wheel="):
            wheel = Path(arg.split("=", 1)[1])
        else:
            inner.append(arg)
        i += 1
    if wheel is not None and not wheel.is_file():
        raise ContainerError(f"--wheel {wheel}: no such file; fix: give a built wheel's path")
    return SessionArgs(wheel, tuple(inner))


@dataclass(frozen=True)
class ImagePlan:
    variant: str
    backend: str
    gpu: bool
    dockerfile: Path
    buildargs: dict[str, str] = field(default_factory=dict)


def dockerfile_for(variant: str, backend: str) -> Path:
    name = DOCKERFILES.get(backend.upper())
    if name is None:
        why = NO_CONTAINER.get(backend.upper(), f"no Dockerfile for backend {backend}")
        raise ContainerError(f"variant {variant!r} ({backend}): {why}")
    path = DOCKER_DIR / name
    if not path.is_file():
        raise ContainerError(f"{path}: missing; fix: restore docker/ from the repository")
    return path


def _env_build_args(env: Mapping[str, str]) -> dict[str, str]:
    """``LLAMA_HARNESS_DOCKER_BUILD_ARGS="A=1 B=2"`` and ``LLAMA_HARNESS_BASE_IMAGE``."""
    out: dict[str, str] = {}
    for item in shlex.split(env.get("LLAMA_HARNESS_DOCKER_BUILD_ARGS", "")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ContainerError(
                f"LLAMA_HARNESS_DOCKER_BUILD_ARGS: {item!r} is not KEY=VALUE; "
                'fix: e.g. LLAMA_HARNESS_DOCKER_BUILD_ARGS="PYTHON_VERSION=3.11"'
            )
        out[key] = value
    if env.get("LLAMA_HARNESS_BASE_IMAGE"):
        out["BASE_IMAGE"] = env["LLAMA_HARNESS_BASE_IMAGE"]
    if env.get("LLAMA_HARNESS_RUNTIME_IMAGE"):
        out["RUNTIME_IMAGE"] = env["LLAMA_HARNESS_RUNTIME_IMAGE"]
    return out


def plan_image(variant_name: str, env: Mapping[str, str] | None = None) -> ImagePlan:
    """Dockerfile and build args of ``variant_name`` from the variant registry."""
    from harness.build.variants import load_registry

    env = os.environ if env is None else env
    registry = load_registry()
    variant = registry.variants.get(variant_name)
    if variant is None:
        known = ", ".join(sorted(registry.variants))
        raise ContainerError(f"unknown variant {variant_name!r}; known: {known}")
    dockerfile = dockerfile_for(variant.name, variant.backend)
    args: dict[str, str] = {
        "LLAMA_CPP_PYTHON_VERSION": registry.sdist.version,
        "LLAMA_CPP_PYTHON_SHA256": registry.sdist.sha256,
    }
    cmake = [a for a in variant.cmake_args if not a.startswith("-DCMAKE_CUDA_ARCHITECTURES")]
    if variant.backend.upper() == "CUDA":
        archs = env.get("LLAMA_HARNESS_CUDA_ARCHITECTURES") or registry.cuda_default_architectures
        args["CUDA_ARCHITECTURES"] = archs
        # The registry's flags as they are: GGML_CUDA_NO_VMM=ON keeps libcuda (present only
        # where a driver is) out of the link, as on the host.
    args["CMAKE_ARGS"] = shlex.join(cmake)
    args.update(BACKEND_PACKAGES.get(variant.backend.upper(), {}))
    args.update(_env_build_args(env))
    return ImagePlan(variant.name, variant.backend.upper(), variant.gpu, dockerfile, args)


# --------------------------------------------------------------------------- build context


def _project_files(root: Path) -> list[Path]:
    from harness.ship.bundle import project_files

    return [
        p
        for p in project_files(root)
        if not any(p.relative_to(root).as_posix().startswith(d + "/") for d in CONTEXT_DIRS)
    ]


def stage_context(
    plan: ImagePlan,
    dest: Path,
    *,
    wheel: Path | None = None,
    root: Path = paths.PROJECT_ROOT,
    ca_dirs: Iterable[Path] = CA_DIRS,
) -> Path:
    """Write the build context for ``plan`` into ``dest`` and return it."""
    for rel in _project_files(root):
        target = dest / rel.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(rel, target)
    for rel_dir in CONTEXT_DIRS:
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
    version = plan.buildargs.get("LLAMA_CPP_PYTHON_VERSION", "")
    sdist = paths.sdist_file(version)
    if sdist.is_file():
        shutil.copyfile(sdist, dest / "docker/sdist" / sdist.name)
    if wheel is not None:
        shutil.copyfile(wheel, dest / "docker/wheels" / wheel.name)
    for ca_dir in ca_dirs:
        for cert in sorted(ca_dir.glob("*.crt")) if ca_dir.is_dir() else []:
            shutil.copyfile(cert, dest / "docker/certs" / cert.name)
    return dest


def context_digest(context: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(path.relative_to(context).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def image_tag(plan: ImagePlan, context: Path) -> str:
    """``llama-harness/<variant>:<hash>`` of the Dockerfile, build args and context files."""
    digest = hashlib.sha256()
    digest.update(plan.dockerfile.read_bytes())
    for key in sorted(plan.buildargs):
        digest.update(f"{key}={plan.buildargs[key]}\n".encode())
    digest.update(context_digest(context).encode())
    return f"{IMAGE_REPO}/{plan.variant}:{digest.hexdigest()[:16]}"


# --------------------------------------------------------------------------- the engine


def connect(env: Mapping[str, str] | None = None) -> Any:
    """A Docker SDK client for ``DOCKER_HOST`` (or the default socket) that answered a ping."""
    env = os.environ if env is None else env
    try:
        from docker.client import from_env
        from docker.errors import DockerException
    except ImportError as exc:
        raise ContainerError(
            "the Docker SDK for Python is not installed; fix: pip install "
            "'saiverse-llama-harness[container]' (or pip install 'docker>=7')"
        ) from exc
    where = env.get("DOCKER_HOST") or "unix:///var/run/docker.sock (default)"
    try:
        client = from_env(environment=dict(env))
        client.ping()
    except (DockerException, OSError) as exc:
        text = str(exc)
        if "Permission denied" in text or "PermissionError" in text:
            raise ContainerError(
                f"no permission to use the Docker engine at {where}: {text}; fix: add your "
                "user to the docker group (sudo usermod -aG docker $USER, then log in again) "
                "or run as root"
            ) from exc
        raise ContainerError(f"no Docker engine answers at {where}: {text}; {FIX_ENGINE}") from exc
    return client


def has_nvidia_runtime(client: Any) -> bool:
    runtimes = client.info().get("Runtimes") or {}
    return "nvidia" in runtimes


def image_exists(client: Any, tag: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
    except ImageNotFound:
        return False
    return True


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)")


def build_image(client: Any, plan: ImagePlan, context: Path, tag: str, *, log: Log = _print) -> str:
    """Build ``tag`` with the classic builder, streaming the log; return the image id."""
    from docker.errors import APIError

    lines: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context),
            dockerfile=plan.dockerfile.relative_to(paths.PROJECT_ROOT).as_posix(),
            tag=tag,
            buildargs=plan.buildargs,
            network_mode="host",
            rm=True,
            forcerm=True,
            decode=True,
            labels={"llama-harness.variant": plan.variant},
        )
        for chunk in stream:
            if "stream" in chunk:
                text = str(chunk["stream"])
                for line in text.splitlines():
                    lines.append(line)
                    log(line)
            if "aux" in chunk and isinstance(chunk["aux"], dict):
                image_id = str(chunk["aux"].get("ID", image_id))
            if "error" in chunk:
                detail = str(chunk.get("errorDetail", {}).get("message") or chunk["error"])
                raise ContainerError(_build_failure(plan, tag, detail, lines))
    except APIError as exc:
        raise ContainerError(_build_failure(plan, tag, str(exc), lines)) from exc
    return image_id or tag


def _build_failure(plan: ImagePlan, tag: str, detail: str, lines: Sequence[str]) -> str:
    base = plan.buildargs.get("BASE_IMAGE", "the Dockerfile's default BASE_IMAGE")
    hint = ""
    lowered = detail.lower()
    if any(
        s in lowered
        for s in ("pull access denied", "manifest unknown", "registry", "dial tcp", "toomanyreq")
    ):
        hint = f"\nthe base image {base} could not be pulled; {FIX_REGISTRY}"
    step = next((m.group(0) for m in map(_STEP.match, reversed(lines)) if m), "")
    return (
        f"building {tag} from {plan.dockerfile} failed"
        + (f" at {step}" if step else "")
        + f": {detail}{hint}"
    )


def _mounts(plan: ImagePlan, env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    hf_home = Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    reports = paths.reports_dir()
    models = paths.models_dir()
    for folder in (hf_home, reports, models):
        folder.mkdir(parents=True, exist_ok=True)
    return {
        str(hf_home): {"bind": "/hf-home", "mode": "rw"},
        str(models): {"bind": "/cache/llama-harness/models", "mode": "rw"},
        str(reports): {"bind": "/reports", "mode": "rw"},
    }


def container_command(session: str, inner: Sequence[str]) -> list[str]:
    """Run ``nox -s SESSION`` on the image's wheel (the exit status is the session's)."""
    wheel_args = "--wheel /opt/llama/llama_cpp_python-*.whl " if "-" in session else ""
    return ["bash", "-c", f'exec nox -s "$0" -- {wheel_args}"$@"', session, *inner]


def container_user() -> str | None:
    """The caller's ``uid:gid``: the session writes into the mounted report and model folders
    with the caller's rights, and what it writes stays the caller's. (A plain ``docker run``
    of the image runs as its unprivileged user, uid 10001.) None where there are no uids."""
    if not hasattr(os, "getuid"):
        return None
    return f"{os.getuid()}:{os.getgid()}"


def run_container(
    client: Any,
    tag: str,
    command: Sequence[str],
    *,
    gpu: bool,
    volumes: Mapping[str, Mapping[str, str]] | None = None,
    environment: Mapping[str, str] | None = None,
    network_mode: str = "none",
    log: Log = _print,
) -> int:
    """Run ``command`` in ``tag``, stream its output, return its exit status."""
    from docker.errors import APIError
    from docker.types import DeviceRequest

    requests = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else None
    env = dict(environment or {})
    env["LLAMA_HARNESS_CONTAINER_GPU_REQUESTED"] = "1" if gpu else "0"
    try:
        container = client.containers.create(
            tag,
            list(command),
            device_requests=requests,
            volumes={k: dict(v) for k, v in (volumes or {}).items()},
            environment=env,
            network_mode=network_mode,
            working_dir=CONTAINER_WORKDIR,
            labels={"llama-harness": "session"},
            user=container_user(),
        )
    except APIError as exc:
        raise _run_failure(client, exc, gpu) from exc
    try:
        container.start()
    except APIError as exc:
        with contextlib.suppress(APIError):
            container.remove(force=True)
        raise _run_failure(client, exc, gpu) from exc
    try:
        for chunk in container.logs(stream=True, follow=True):
            for line in chunk.decode("utf-8", "replace").splitlines():
                log(line)
        result = container.wait()
        return int(result.get("StatusCode", 1))
    except KeyboardInterrupt:
        with contextlib.suppress(APIError):
            container.kill()
        raise
    finally:
        with contextlib.suppress(APIError):
            container.remove(force=True)


_REQUIRE_CUDA = re.compile(r"unsatisfied condition: cuda\s*>=\s*(\d+\.\d+)")


def driver_refusal(text: str) -> str | None:
    """The one-line explanation when the NVIDIA runtime refused a CUDA image for its driver
    (the image's NVIDIA_REQUIRE_CUDA), or None for any other failure."""
    from harness.ship import images

    m = _REQUIRE_CUDA.search(text)
    if m is None:
        return None
    need = images.refused_requirement(m.group(1))
    return (
        f"the NVIDIA container runtime refused to start the image: this host's driver is too "
        f"old for CUDA {m.group(1)}; the image needs {need}. Fix: upgrade the host driver "
        "(check with `nvidia-smi`), or build the image on an older CUDA: --build-arg "
        "BASE_IMAGE=... RUNTIME_IMAGE=... CUDA_VERSION=... (docker/README.md)"
    )


def _run_failure(client: Any, exc: Exception, gpu: bool) -> ContainerError:
    text = str(exc)
    refusal = driver_refusal(text)
    if refusal is not None:
        return ContainerError(refusal)
    if gpu and ("could not select device driver" in text or "nvidia" in text.lower()):
        runtimes = "no 'nvidia' runtime" if not has_nvidia_runtime(client) else "a runtime"
        return ContainerError(
            f"the Docker engine cannot pass the GPU to the container ({text}); the daemon has "
            f"{runtimes} registered: the NVIDIA Container Toolkit is missing or not configured; "
            + FIX_NVIDIA
        )
    return ContainerError(f"starting the container failed: {text}")


@contextlib.contextmanager
def _staged(plan: ImagePlan, wheel: Path | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="llama-harness-ctx-") as tmp:
        yield stage_context(plan, Path(tmp), wheel=wheel)


def ensure_image(
    client: Any, plan: ImagePlan, *, wheel: Path | None = None, log: Log = _print
) -> str:
    """The image tag for ``plan``: reused when the engine has it, built otherwise."""
    with _staged(plan, wheel) as context:
        tag = image_tag(plan, context)
        if image_exists(client, tag) and not os.environ.get("LLAMA_HARNESS_CONTAINER_REBUILD"):
            log(f"container: reusing image {tag}")
            return tag
        log(f"container: building image {tag} from {plan.dockerfile.name} (classic builder)")
        build_image(client, plan, context, tag, log=log)
        _drop_older_tags(client, tag, log=log)
        return tag


def _drop_older_tags(client: Any, keep: str, *, log: Log = _print) -> None:
    """Untag the variant's older images (their shared layers stay as the build cache)."""
    from docker.errors import APIError

    repo = keep.rsplit(":", 1)[0]
    for image in client.images.list(name=repo):
        for old in image.tags:
            if old != keep and old.startswith(repo + ":"):
                with contextlib.suppress(APIError):
                    client.images.remove(old)
                    log(f"container: removed the older image {old}")


def run_session_in_container(variant: str, session: str, posargs: list[str]) -> int:
    """Build or reuse ``variant``'s image and run ``nox -s SESSION`` in it; return its status.

    ``--container`` is dropped from ``posargs``; ``--wheel PATH`` puts that wheel into the
    image instead of compiling one; the rest goes to the session inside.
    """
    try:
        args = split_posargs(posargs)
        plan = plan_image(variant)
        client = connect()
        if plan.gpu and not has_nvidia_runtime(client):
            _print(
                "container: warning: the Docker daemon lists no 'nvidia' runtime; "
                "the GPU request may fail (" + FIX_NVIDIA + ")"
            )
        tag = ensure_image(client, plan, wheel=args.wheel)
        network = os.environ.get("LLAMA_HARNESS_CONTAINER_NETWORK", "none")
        _print(f"container: running `nox -s {session}` in {tag} (gpu={plan.gpu}, net={network})")
        return run_container(
            client,
            tag,
            container_command(session, args.inner),
            gpu=plan.gpu,
            volumes=_mounts(plan, os.environ),
            environment={"LLAMA_HARNESS_VARIANT": plan.variant},
            network_mode=network,
        )
    except ContainerError as exc:
        print(error_line_of(exc), file=sys.stderr)  # "error: container mode ... Fix: ..."
        return 2
