"""Install a variant's wheel into another Python environment, pinned, then verify it there.

``llama-harness install VARIANT --python PATH`` (harness/commands/install.py) runs::

    wheel (--wheel FILE / the wheel cache / a build) -> inspect the interpreter (a venv with
    pip) -> copy the wheel into the venv (<venv>/llama-harness/) -> pip install it there
    (--no-deps --force-reinstall) and its runtime deps -> pin it: a constraints file naming
    that copy, set in the venv's own pip.conf -> harness.build.verify in that interpreter

Why the pin holds: pip reads ``<sys.prefix>/pip.conf`` of whatever interpreter runs it (the
"site" configuration, activated or not), and a constraint ``llama-cpp-python @ file://...``
makes every later resolution of llama-cpp-python in that venv pick exactly that wheel: a
plain ``pip install llama-cpp-python`` keeps it, ``--force-reinstall``/``-U`` reinstall the
same file, another version is refused as a conflict. Nothing can quietly compile a CPU build
from the sdist over it. The copy inside the venv keeps the pin valid when the harness cache
is cleaned. What bypasses it: ``PIP_CONSTRAINT`` set in the environment (it replaces the
configured constraint), ``--isolated``, and other installers (uv, conda) that do not read
pip.conf; :data:`PIN_NOTE` says so to the user.

The constraint files pip already had (environment or pip config, e.g. a machine-wide one)
are kept: they are included from the new file with ``-c``.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from saiverse_llm.atomic import atomic_copy, atomic_write_json, atomic_write_text
from saiverse_llm.download import sha256_file

RUNTIME_DEPS = ("numpy>=1.20", "diskcache>=5.6.1", "jinja2>=2.11.3", "typing-extensions>=4.5")
PIN_DIR = "llama-harness"
CONSTRAINTS_NAME = "llama-harness-constraints.txt"
PIN_NOTE = (
    "pinned through {conf}: pip in this venv keeps this build. Not covered: PIP_CONSTRAINT "
    "set in the environment, pip --isolated, uv and conda (they do not read pip.conf)"
)

Say = Callable[[str], None]


class InstallError(RuntimeError):
    """The wheel cannot be installed there; the message names what and the fix."""


@dataclass(frozen=True)
class TargetEnv:
    """The interpreter to install into: ``python`` and its ``sys.prefix`` (a venv)."""

    python: Path
    prefix: Path
    version: str

    @property
    def pin_dir(self) -> Path:
        return self.prefix / PIN_DIR

    @property
    def pip_conf(self) -> Path:
        return self.prefix / ("pip.ini" if sys.platform == "win32" else "pip.conf")


@dataclass(frozen=True)
class Installed:
    """What :func:`install_wheel_into` did."""

    env: TargetEnv
    wheel: Path  # the copy inside the venv that the pin names
    sha256: str
    constraints: Path
    pip_conf: Path


# --------------------------------------------------------------------------- constraints


def configured_constraints(python: str | os.PathLike[str] | None = None) -> list[str]:
    """Constraint files pip already applies for ``python`` (default: this interpreter):
    ``$PIP_CONSTRAINT`` and every ``*.constraint`` value of ``pip config list``."""
    found = [c for c in os.environ.get("PIP_CONSTRAINT", "").split() if c]
    try:
        out = subprocess.run(
            [str(python or sys.executable), "-m", "pip", "config", "list"],
            capture_output=True, text=True, timeout=60, check=False,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        name, _, value = line.partition("=")
        if name.endswith(".constraint"):
            found += value.strip().strip("'\"").split()
    return list(dict.fromkeys(found))


def write_constraints(
    folder: Path, wheel: Path, *, keep: Sequence[str] | None = None, python: str | None = None
) -> Path:
    """``<folder>/llama-harness-constraints.txt``: ``llama-cpp-python @ file://<wheel>`` plus
    ``-c`` lines for the constraint files pip already had (``keep``, default
    :func:`configured_constraints` of ``python``), written atomically."""
    path = folder / CONSTRAINTS_NAME
    earlier = configured_constraints(python) if keep is None else list(keep)
    lines = [f"llama-cpp-python @ {wheel.resolve().as_uri()}"]
    lines += [
        f"-c {c}" for c in earlier if Path(c).is_file() and Path(c).resolve() != path.resolve()
    ]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_pip_conf(conf: Path, constraints: Path) -> Path:
    """Set ``constraint = <constraints>`` in the venv's pip.conf (``[global]``, and
    ``[install]`` when that section sets its own), keeping every other setting."""
    parser = configparser.ConfigParser(interpolation=None)
    if conf.is_file():
        parser.read(conf, encoding="utf-8")
    if not parser.has_section("global"):
        parser.add_section("global")
    parser.set("global", "constraint", str(constraints))
    if parser.has_section("install") and parser.has_option("install", "constraint"):
        parser.set("install", "constraint", str(constraints))
    text = io.StringIO()
    text.write("# llama-harness install: pins llama-cpp-python to a verified build\n")
    parser.write(text)
    return atomic_write_text(conf, text.getvalue())


# --------------------------------------------------------------------------- target


_PROBE = (
    "import json, sys\n"
    "try:\n"
    "    import pip\n"
    "    has_pip = True\n"
    "except ImportError:\n"
    "    has_pip = False\n"
    "print(json.dumps({'prefix': sys.prefix, 'base_prefix': sys.base_prefix, "
    "'version': '.'.join(map(str, sys.version_info[:3])), 'pip': has_pip}))\n"
)


def inspect_python(python: str | os.PathLike[str]) -> TargetEnv:
    """The environment of interpreter ``python``; it must be a virtual environment with pip
    (writing a pin into a system Python would change every user of that Python)."""
    exe = Path(python).expanduser()
    if not exe.exists():
        raise InstallError(
            f"--python {exe}: no such file. Fix: give the interpreter of the target venv, "
            "e.g. --python ~/SAIVerse/.venv/bin/python"
        )
    try:
        proc = subprocess.run(
            [str(exe), "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError as exc:
        raise InstallError(f"--python {exe}: cannot run it ({exc.strerror or exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise InstallError(f"--python {exe}: did not answer in 60 s") from exc
    try:
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        tail = (proc.stderr or proc.stdout).strip()[-300:]
        raise InstallError(f"--python {exe}: not a working Python interpreter ({tail})") from exc
    prefix = Path(facts["prefix"])
    if facts["prefix"] == facts["base_prefix"]:
        raise InstallError(
            f"--python {exe}: this is not a virtual environment's interpreter (sys.prefix "
            f"{prefix}); installing and pinning there would change that Python for every user. "
            f"Fix: create a venv (python3 -m venv DIR) and pass --python DIR/bin/python"
        )
    if not facts["pip"]:
        raise InstallError(
            f"--python {exe}: pip is not installed in {prefix}. Fix: {exe} -m ensurepip"
        )
    return TargetEnv(python=exe, prefix=prefix, version=str(facts["version"]))


def _pip(env: TargetEnv, args: Sequence[str], say: Say) -> None:
    cmd = [str(env.python), "-m", "pip", *args]
    say("$ " + " ".join(cmd))
    proc = subprocess.run(
        cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-20:])
        raise InstallError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}\nFix: the pip error "
            "above (network, disk space, a conflicting pin in the target venv), then rerun"
        )


def _copy_wheel(wheel: Path, env: TargetEnv) -> Path:
    """A copy of the wheel inside the venv (same file name: pip needs it), atomically."""
    env.pin_dir.mkdir(parents=True, exist_ok=True)
    target = env.pin_dir / wheel.name
    if target.resolve() == wheel.resolve():
        return target
    atomic_copy(wheel, target)
    for old in env.pin_dir.glob("llama_cpp_python-*.whl"):
        if old.name != target.name:
            old.unlink()
    return target


def install_wheel_into(
    python: str | os.PathLike[str],
    wheel: Path,
    *,
    variant: str,
    provider: Path | None = None,
    say: Say | None = None,
) -> Installed:
    """Install ``wheel`` into the venv of ``python`` and pin it there (see the module doc).

    ``provider``: also install this project (a source folder) into the venv, under the pin.
    Raises :class:`InstallError`. Verification is the caller's next step.
    """
    tell = say or (lambda msg: print(msg, file=sys.stderr))
    env = inspect_python(python)
    earlier = [c for c in configured_constraints(env.python) if Path(c).name != CONSTRAINTS_NAME]
    copy = _copy_wheel(wheel, env)
    digest = sha256_file(copy)
    constraints = write_constraints(env.pin_dir, copy, keep=earlier)
    _pip(env, ["install", "--no-deps", "--force-reinstall", "-c", str(constraints), str(copy)],
         tell)  # fmt: skip
    _pip(env, ["install", "-c", str(constraints), *RUNTIME_DEPS], tell)
    if provider is not None:
        _pip(env, ["install", "-c", str(constraints), str(provider)], tell)
    conf = write_pip_conf(env.pip_conf, constraints)
    record = {
        "variant": variant,
        "wheel": str(copy),
        "source_wheel": str(wheel),
        "sha256": digest,
        "constraints": str(constraints),
        "pip_conf": str(conf),
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(env.pin_dir / "install.json", record)
    return Installed(env=env, wheel=copy, sha256=digest, constraints=constraints, pip_conf=conf)
