"""The container's memory limit (saiverse_llm.cgroup_memory) and the memory checks that take
it when it is below the machine's free memory (saiverse_llm.fit.available_memory), against
fake cgroup file systems in a temporary folder: v2, v1, nested limits, "max", missing
files, a container's view of its own cgroup as the root."""

from __future__ import annotations

from pathlib import Path

import pytest

from saiverse_llm import fit
from saiverse_llm.cgroup_memory import memory_headroom

GIB, MIB = fit.GIB, fit.MIB


def write(folder: Path, **files: str | int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in files.items():
        (folder / name.replace("_", ".", 1)).write_text(f"{value}\n")


def cgroup_list(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "self-cgroup"
    path.write_text(text)
    return path


def test_v2_limit_minus_what_cannot_be_dropped(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    write(root, memory_max=2 * GIB, memory_current=GIB,
          memory_stat=f"anon 700000000\ninactive_file {256 * MIB}\nactive_file 1\n")  # fmt: skip
    assert memory_headroom(root, cgroup_list(tmp_path, "0::/\n")) == 2 * GIB - (GIB - 256 * MIB)


@pytest.mark.parametrize("limit", ["max", "", "garbage", None])
def test_v2_without_a_limit_is_none(tmp_path: Path, limit: str | None) -> None:
    root = tmp_path / "fs"
    write(root, memory_current=GIB)
    if limit is not None:
        write(root, memory_max=limit)
    assert memory_headroom(root, cgroup_list(tmp_path, "0::/\n")) is None


def test_v2_the_smallest_room_of_the_cgroup_and_those_above_it(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    write(root, memory_max="max", memory_current=20 * GIB)  # the root: no limit
    write(root / "a", memory_max=GIB, memory_current=512 * MIB)  # 512 MiB left here
    write(root / "a" / "b", memory_max="max", memory_current=100 * MIB)
    own = cgroup_list(tmp_path, "0::/a/b\n")
    assert memory_headroom(root, own) == 512 * MIB
    write(root / "a" / "b", memory_max=200 * MIB)  # now the own cgroup is tighter
    assert memory_headroom(root, own) == 100 * MIB


def test_a_container_sees_its_cgroup_as_the_root(tmp_path: Path) -> None:
    """/proc/self/cgroup names a path of the host's tree that is not mounted inside."""
    root = tmp_path / "fs"
    write(root, memory_max=4 * GIB, memory_current=GIB)
    own = cgroup_list(tmp_path, "0::/system.slice/docker-abc.scope\n")
    assert memory_headroom(root, own) == 3 * GIB


def test_v1_memory_controller(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    unlimited = 9223372036854771712
    write(root / "memory", memory_limit_in_bytes=unlimited, memory_usage_in_bytes=9 * GIB)
    write(root / "memory" / "docker" / "x", memory_limit_in_bytes=GIB,
          memory_usage_in_bytes=600 * MIB,
          memory_stat=f"inactive_file 1\ntotal_inactive_file {100 * MIB}\n")  # fmt: skip
    write(root / "unified")  # a hybrid machine: v2 mounted too, without memory files
    text = "9:name=systemd:/\n4:memory:/docker/x\n0::/\n"
    assert memory_headroom(root, cgroup_list(tmp_path, text)) == GIB - 500 * MIB
    write(root / "memory" / "docker" / "x", memory_limit_in_bytes=unlimited)
    assert memory_headroom(root, cgroup_list(tmp_path, text)) is None


def test_no_cgroup_files_at_all(tmp_path: Path) -> None:
    assert memory_headroom(tmp_path / "none", tmp_path / "no-self-cgroup") is None
    assert memory_headroom(tmp_path / "none", cgroup_list(tmp_path, "4:memory:/x\n")) is None


def test_memory_checks_take_the_container_limit_when_it_is_smaller(tmp_path: Path) -> None:
    machine = fit.available_memory(swap=False, cgroup_root=tmp_path / "none")
    if machine is None:
        pytest.skip("no /proc/meminfo")
    assert machine[1] == "MemAvailable"
    root = tmp_path / "fs"
    own = cgroup_list(tmp_path, "0::/\n")
    write(root, memory_max=512 * MIB, memory_current=128 * MIB)
    limited = fit.available_memory(swap=False, cgroup_root=root, self_cgroup=own)
    assert limited == (384 * MIB, "the room under this container's cgroup memory limit")
    with_swap = fit.available_memory(swap=True, cgroup_root=root, self_cgroup=own)
    assert with_swap is not None and with_swap[0] >= 384 * MIB and "SwapFree" in with_swap[1]
    write(root, memory_max=machine[0] * 4)  # a limit above the machine's free memory
    roomy = fit.available_memory(swap=False, cgroup_root=root, self_cgroup=own)
    assert roomy is not None and roomy[1] == "MemAvailable"
