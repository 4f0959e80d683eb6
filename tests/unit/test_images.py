"""harness/ship/images.py: the pinned base images and the one driver requirement, and where it is
said: container mode when the runtime refuses an image, the doctor for a log with that error."""

from __future__ import annotations

import pytest

from harness.doctor import build_log, doctor
from harness.ship import container, images

REFUSAL = (
    "docker: Error response from daemon: failed to create task for container: failed to create "
    "shim task: OCI runtime create failed: runc create failed: unable to start container "
    "process: error during container init: error running prestart hook #0: exit status 1, "
    "stdout: , stderr: Auto-detected mode as 'legacy'\nnvidia-container-cli: requirement "
    "error: unsatisfied condition: cuda>=12.8, please update your driver to a newer version, "
    "or use an earlier cuda container: unknown"
)


@pytest.mark.parametrize(
    ("cuda", "driver"),
    [
        ("12.8.1", "570.124.06"),
        ("12.8", "570.26"),
        ("12.8.0", "570.26"),
        ("12.4.2", "550.54.15"),  # between rows: the row below
        ("12.2", "535.54.03"),
        ("13.0", "580.65.06"),
        ("11.8", None),  # not in the table: unknown, never guessed
    ],
)
def test_min_driver_from_nvidias_table(cuda: str, driver: str | None) -> None:
    assert images.min_driver(cuda) == driver


def test_driver_requirement_is_one_sentence_with_driver_branch_and_reason() -> None:
    text = images.driver_requirement()
    assert images.CUDA_VERSION == "12.8.1"
    assert text.startswith("NVIDIA driver 570.124.06 or newer (R570+")
    assert 'nvidia-smi "CUDA Version" >= 12.8' in text
    assert "NVIDIA_REQUIRE_CUDA=cuda>=12.8" in text
    # the image's other NVIDIA_REQUIRE_CUDA alternatives: data-centre/workstation GPUs on the
    # forward-compatibility branches (a GeForce card needs R570+)
    assert "not GeForce" in text and "R470, R535, R550, R560, R565" in text
    assert "forward-compatibility" not in images.driver_requirement("12.6")
    assert images.driver_requirement("11.8").startswith("an NVIDIA driver (nvidia-smi")
    with pytest.raises(ValueError, match=r"MAJOR\.MINOR"):
        images.driver_requirement("twelve")


def test_container_mode_explains_a_refused_image() -> None:
    text = container.driver_refusal(REFUSAL)
    assert text is not None
    assert "570.124.06" in text and "CUDA 12.8" in text and "Fix: upgrade the host driver" in text
    assert container.driver_refusal("could not select device driver") is None
    err = container._run_failure(object(), RuntimeError(REFUSAL), gpu=True)
    assert str(err) == text


def test_the_doctor_names_the_refusal_and_the_requirement_from_a_log() -> None:
    facts = {**build_log.log_facts(REFUSAL)}
    assert facts["log.required_cuda"] == "12.8"
    facts.update(doctor.hint_facts(facts))
    matches = doctor.match_causes(facts)
    ids = [m.cause.id for m in matches]
    assert "container-driver-too-old" in ids
    match = next(m for m in matches if m.cause.id == "container-driver-too-old")
    assert any("570.124.06" in line for line in match.fix), match.fix
    # another CUDA version in the log: that version's driver
    other = build_log.log_facts(REFUSAL.replace("cuda>=12.8", "cuda>=12.6"))
    assert "560.28.03" in doctor.hint_facts(other)["hint.container_driver"]


def test_container_mode_runs_the_session_as_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bind-mounted reports/models are the caller's: the image's own user (10001) could not
    write them (found running test-cpu in the image on a private engine)."""
    monkeypatch.setattr(container.os, "getuid", lambda: 1234)
    monkeypatch.setattr(container.os, "getgid", lambda: 55)
    assert container.container_user() == "1234:55"
    monkeypatch.setattr(container.os, "getuid", lambda: 0)
    monkeypatch.setattr(container.os, "getgid", lambda: 0)
    assert container.container_user() == "0:0"
