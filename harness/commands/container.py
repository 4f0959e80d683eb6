"""``llama-harness container``: check the engine, build a variant's image, run a session in it.

llama-harness container check [--gpu]       engine reachable? NVIDIA runtime registered?
llama-harness container build cpu           build (or reuse) the image, print its tag
llama-harness container run cpu test-cpu -- -k chat
llama-harness container pin [--check]       re-resolve the base images' digests
"""

from __future__ import annotations

import argparse
from typing import Any

from harness.ship import container, images
from saiverse_llm.user_errors import UsageError, UserError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "container",
        help="container mode: check the Docker engine, build a variant's image, run a session",
        description=(
            "Images come from docker/Dockerfile.<backend> (classic builder, no BuildKit needed); "
            "DOCKER_HOST is honoured. `nox -s test-<variant> -- --container` does build+run."
        ),
    )
    sub = parser.add_subparsers(dest="container_command", metavar="{check,build,run,pin}")
    check = sub.add_parser("check", help="is an engine reachable (and can it pass a GPU)?")
    check.add_argument("--gpu", action="store_true", help="also require the NVIDIA runtime")
    check.set_defaults(func=_check)
    build = sub.add_parser("build", help="build or reuse a variant's image; prints the tag")
    build.add_argument("variant", help="a variant of harness/build/variants.yaml, e.g. cuda")
    build.add_argument("--wheel", help="put this built wheel into the image (no compile)")
    build.set_defaults(func=_build)
    run = sub.add_parser("run", help="run a Nox session of a variant inside its image")
    run.add_argument("variant", help="a variant of harness/build/variants.yaml, e.g. cuda")
    run.add_argument("session", help="e.g. test-cpu, bench-cuda")
    run.add_argument("args", nargs="*", help="after --: arguments for the session")
    run.set_defaults(func=_run)
    pin = sub.add_parser(
        "pin",
        help="resolve each base image tag to its current digest and rewrite the pins",
        description=(
            "Ask the Docker engine's registry access for the digest of every tag in "
            "harness/ship/images.py (PINS) and rewrite `<tag>@sha256:<digest>` wherever it "
            "appears: "
            "docker/Dockerfile.*, harness/ship/images.py. Needs an engine that reaches the "
            "registry. "
            "--check only reports (exit 1 when a pin is out of date)."
        ),
    )
    pin.add_argument("--check", action="store_true", help="report only; exit 1 when stale")
    pin.set_defaults(func=_pin)
    parser.set_defaults(func=_no_action)


def _no_action(args: argparse.Namespace) -> int:
    raise UsageError("container needs an ACTION", "one of check, build, run, pin (see --help)")


def _check(args: argparse.Namespace) -> int:
    client = container.connect()
    version = client.version()
    print(f"engine: Docker {version.get('Version')} (API {version.get('ApiVersion')}) answers")
    nvidia = container.has_nvidia_runtime(client)
    print("nvidia runtime: " + ("registered" if nvidia else "not registered"))
    if args.gpu and not nvidia:
        print(container.FIX_NVIDIA)
        return 1
    return 0


def _build(args: argparse.Namespace) -> int:
    wheel = container.split_posargs(["--wheel", args.wheel] if args.wheel else []).wheel
    plan = container.plan_image(args.variant)
    tag = container.ensure_image(container.connect(), plan, wheel=wheel)
    print(tag)
    return 0


def _run(args: argparse.Namespace) -> int:
    return container.run_session_in_container(args.variant, args.session, list(args.args))


def _pin(args: argparse.Namespace) -> int:
    from docker.errors import APIError

    from saiverse_llm.atomic import atomic_write_text

    client = container.connect()  # ContainerError: the error line of harness.cli
    stale = 0
    for role, pin in images.PINS.items():
        try:
            digest = str(client.images.get_registry_data(pin.tag).id)
        except APIError as exc:
            raise UserError(
                f"{role}: cannot resolve {pin.tag} ({exc})",
                "run where the engine reaches the registry (docker login for private ones)",
            ) from exc
        if digest == pin.digest:
            print(f"{role}: {pin.tag} is current ({digest[:19]}...)")
            continue
        stale += 1
        print(f"{role}: {pin.tag}: {pin.digest[:19]}... -> {digest[:19]}...")
        if not args.check:
            for path in images.PINNED_FILES:
                text = path.read_text(encoding="utf-8")
                new = images.repin(text, pin.tag, digest)
                if new != text:
                    atomic_write_text(path, new)
                    print(f"  rewrote {path}")
    return 1 if args.check and stale else 0
