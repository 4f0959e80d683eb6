"""Both command lines answer bad input with one error line, never a traceback.

``test_every_subcommand_with_bad_values`` walks the argparse parsers of ``llama-harness`` and
``saiverse-llm`` (sub-commands of sub-commands included), so a command added later is covered
without touching this file: every typed option gets values it must refuse (not a number, a
5,000-digit number, NaN, an unknown choice, a path that cannot exist) and every command gets
hostile names for its positionals. Each run must exit 1 or 2 with ``error: <what>. Fix:
<what to do>`` as the last line on stderr, no traceback, no "internal error", and nothing
but results on stdout.

The review's reproducers (``cases/review/cli_traceback.sh``) are tests below, one per line.
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from harness import cli as harness_cli
from saiverse_llm import cli as saiverse_cli

ERROR_LINE = re.compile(r"^error: \S.*\. Fix: \S.*$")
HOSTILE_NAME = "nosuch-\u30e2\u30c7\u30eb-$HOME-%s-`id`"
BAD_INTS = ["x", "9" * 5000, "-" + "9" * 30, "1.5", "nan", "\u00b2", "\u0663", "1_000"]
BAD_FLOATS = ["x", "nan", "inf", "1e999", "-1e999"]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command runs in an empty world: its own cache, reports, configs, no network."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LLAMA_HARNESS_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("SAIVERSE_USER_DATA_DIR", str(tmp_path / "user"))
    monkeypatch.setenv("SAIVERSE_LOG_FILE", str(tmp_path / "saiverse_log.txt"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    monkeypatch.delenv("SAIVERSE_LLM_MAX_MODELS", raising=False)
    monkeypatch.delenv("SAIVERSE_LLM_CONTEXT_CAP", raising=False)

    # Never compile here: a command that gets as far as building is a failing test, not a
    # 4-minute llama.cpp build in a temporary cache.
    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a CLI test reached a llama.cpp build")

    from harness.build import build, native_tools

    monkeypatch.setattr(build, "resolve_sdist", no_build)
    monkeypatch.setattr(native_tools, "_build", no_build)
    return tmp_path


# --------------------------------------------------------------------------- discovery


def leaf_commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(argv prefix, parser) of every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if path:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaf_commands(child, (*path, name))


def _type_name(action: argparse.Action) -> str:
    kind = action.type
    if kind is None:
        return "str"
    return str(getattr(kind, "__name__", type(kind).__name__))


def bad_values(action: argparse.Action) -> list[str]:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return ["no-such-choice"]
    kind = _type_name(action)
    if kind == "int":
        return BAD_INTS
    if kind == "float":
        return BAD_FLOATS
    if kind in ("str", "Path", "PurePath"):
        return []  # argparse accepts any text here; the command checks it (hostile names)
    return ["x", "9" * 5000]  # another parser function (sizes...): feed it garbage


def positional_fill(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.nargs in (argparse.REMAINDER, argparse.PARSER):
            continue
        if action.nargs == "?" and action.dest != "variant":
            continue
        out.append(HOSTILE_NAME + (".gguf" if action.dest == "model" else ""))
    return out


def invocations(
    prog: str, build: Callable[[], argparse.ArgumentParser]
) -> Iterator[tuple[str, list[str]]]:
    for path, parser in leaf_commands(build()):
        positionals = positional_fill(parser)
        label = " ".join((prog, *path))
        has_actions = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        if positionals or has_actions:
            # A command without positionals would run its real work with the defaults.
            yield f"{label} <hostile names>", [*path, *positionals]
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            flag = action.option_strings[-1]
            for value in bad_values(action):
                shown = value if len(value) < 20 else value[:8] + "..."
                yield f"{label} {flag} {shown!r}", [*path, *positionals, flag, value]


MAINS: dict[str, tuple[Callable[[Sequence[str]], int], Callable[[], argparse.ArgumentParser]]] = {
    "llama-harness": (harness_cli.main, harness_cli.build_parser),
    "saiverse-llm": (saiverse_cli.main, saiverse_cli.build_parser),
}
CASES = [
    (prog, label, argv)
    for prog, (_main, build) in MAINS.items()
    for label, argv in invocations(prog, build)
]


def run(capsys: pytest.CaptureFixture[str], prog: str, argv: Sequence[str]) -> tuple[int, str, str]:
    main = MAINS[prog][0]
    try:
        code = main(list(argv))
    except SystemExit as exc:  # allowed, but only with a usage/failure status
        code = exc.code if isinstance(exc.code, int) else 2
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_error_line(code: int, out: str, err: str, *, expect: int | None = None) -> str:
    assert "Traceback" not in err and "Traceback" not in out, err
    assert code in (1, 2), f"exit status {code}\nstdout: {out}\nstderr: {err}"
    if expect is not None:
        assert code == expect, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert ERROR_LINE.match(last), f"not an error line: {last!r}\nstderr: {err}"
    assert "internal error" not in last, last
    assert len(last) < 1000, f"an error line of {len(last):,} characters: {last[:200]}..."
    assert not any(ln.startswith("error:") for ln in out.splitlines()), f"error on stdout: {out}"
    return last


def test_the_walk_finds_every_command() -> None:
    names = {label.split(" <")[0] for _prog, label, _argv in CASES if "<hostile" in label}
    for expected in (
        "llama-harness build",
        "llama-harness models fetch",
        "llama-harness container",
        "llama-harness container run",
        "saiverse-llm chat",
        "saiverse-llm check",
    ):
        assert expected in names
    assert len(CASES) > 60
    every = {" ".join((prog, *path)) for prog, (_m, b) in MAINS.items() for path, _p in
             leaf_commands(b())}  # fmt: skip
    assert {"llama-harness report", "saiverse-llm list", "llama-harness variants"} <= every


@pytest.mark.parametrize(
    ("prog", "argv"),
    [pytest.param(p, a, id=label) for p, label, a in CASES if "<hostile" not in label],
)
def test_every_subcommand_with_bad_values(
    capsys: pytest.CaptureFixture[str], prog: str, argv: list[str]
) -> None:
    code, out, err = run(capsys, prog, argv)
    assert_error_line(code, out, err, expect=2)


@pytest.mark.parametrize(
    ("prog", "argv"),
    [pytest.param(p, a, id=label) for p, label, a in CASES if "<hostile" in label],
)
def test_every_subcommand_with_hostile_names(
    capsys: pytest.CaptureFixture[str], prog: str, argv: list[str]
) -> None:
    code, out, err = run(capsys, prog, argv)
    assert_error_line(code, out, err)


# --------------------------------------------------------------------------- the review's lines


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--max-tokens", "0"], "--max-tokens"),
        (["--temperature", "5"], "--temperature"),
        (["--seed", "-2"], "--seed"),
        (["--n-gpu-layers", "-2"], "--n-gpu-layers"),
        (["--n-gpu-layers", "4294967296"], "--n-gpu-layers"),
        (["--n-threads", "0"], "--n-threads"),
    ],
)
def test_chat_refuses_bad_values_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], flag: str
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")  # never read: argparse refuses first
    code, out, err = run(capsys, "saiverse-llm", ["chat", str(model), "hi", *args])
    last = assert_error_line(code, out, err, expect=2)
    assert flag in last and "Fix: give a" in last


def test_check_tokens_zero(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(
        capsys, "saiverse-llm", ["check", str(tmp_path / "m.gguf"), "--tokens", "0"]
    )
    assert "--tokens" in assert_error_line(code, out, err, expect=2)


def test_seed_minus_one_means_random_as_in_llama_cpp() -> None:
    args = saiverse_cli.build_parser().parse_args(["chat", "m.gguf", "hi", "--seed", "-1"])
    assert args.seed == -1  # cmd_chat passes None: a random seed


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SAIVERSE_LLM_MAX_MODELS", "four"),
        ("SAIVERSE_LLM_MAX_MODELS", "-3"),
        ("SAIVERSE_LLM_MAX_MODELS", "9" * 5000),
        ("SAIVERSE_LLM_CONTEXT_CAP", "8k"),
        ("SAIVERSE_LLM_CONTEXT_CAP", "0"),
        ("SAIVERSE_LLM_CONTEXT_CAP", "4294967296"),
        ("SAIVERSE_LLM_MAX_MODELS", "\u00b2"),  # str.isdigit() is True, int() refuses it
        ("SAIVERSE_LLM_CONTEXT_CAP", "\u00b2"),
        ("SAIVERSE_LLM_MAX_MODELS", "\u0663"),  # an Arabic-Indic 3: int() takes it, we do not
        ("SAIVERSE_LLM_CONTEXT_CAP", "1_000"),
        ("SAIVERSE_LLM_CONTEXT_CAP", "9" * 30),
    ],
)
@pytest.mark.parametrize("command", ["chat", "check"])
def test_bad_environment_settings(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_gguf: Path,
    name: str,
    value: str,
    command: str,
) -> None:
    monkeypatch.setenv(name, value)
    argv = [command, str(tiny_gguf), *(["hi"] if command == "chat" else [])]
    code, out, err = run(capsys, "saiverse-llm", argv)
    last = assert_error_line(code, out, err, expect=2)
    assert f"${name}=" in last
    if len(value) > 20:
        assert "outside" in last  # a whole number, only too big


def test_models_fetch_with_an_unwritable_cache_root(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LLAMA_HARNESS_CACHE", str(blocker / "cache"))
    code, out, err = run(capsys, "llama-harness", ["models", "fetch", "tiny"])
    last = assert_error_line(code, out, err, expect=1)
    assert str(blocker) in last


def _import_dir(tmp_path: Path, build_json: str) -> Path:
    folder = tmp_path / "import"
    folder.mkdir()
    wheel = folder / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llama_cpp/lib/libggml-cpu.so", "x")
    (folder / "build.json").write_text(build_json)
    return wheel


@pytest.mark.parametrize(
    "build_json",
    ['{"wheel": "llama_cpp_python-0.3.36-py3-none-lin', '["x"]', "", '{"wheel": 5}', "null"],
    ids=["truncated", "array", "empty", "wheel-not-a-string", "null"],
)
def test_build_import_with_a_bad_build_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, build_json: str
) -> None:
    wheel = _import_dir(tmp_path, build_json)
    code, out, err = run(capsys, "llama-harness", ["build", "--import", str(wheel)])
    last = assert_error_line(code, out, err, expect=1)
    assert "build.json" in last


def test_build_json_errors_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "llama-harness", ["build", "nosuch", "--json"])
    assert_error_line(code, out, err, expect=2)
    assert out == ""


REPORTS = {
    "r1": ("llama-bench.json", {"runs": ["oops"]}),
    "r2": ("llama-bench.json", [{"n_prompt": None, "n_gen": 128, "avg_ts": 1.0}]),
    "r3": ("bench.json", {"benchmarks": [{"name": "x", "stats": None}]}),
    "r4": ("bench.json", {"benchmarks": "nope"}),
    "r5": ("bench.json", {"benchmarks": [{"name": "x", "stats": {"mean": "fast"}}]}),
    "r6": ("llama-bench.json", {"runs": [{"tool": {"n_prompt": "x", "avg_ts": [1]}}]}),
    "r7": ("bench.json", "[" * 100_000),
    "r8": ("llama-bench.json", '{"runs": [1, 2'),
}


@pytest.mark.parametrize("case", sorted(REPORTS))
def test_report_with_malformed_inputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str
) -> None:
    name, doc = REPORTS[case]
    folder = tmp_path / "reports" / "cpu"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text('{"status": "ok"}')
    (folder / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    code, out, err = run(
        capsys, "llama-harness", ["report", "--reports", str(tmp_path / "reports"), "--no-charts"]
    )
    last = assert_error_line(code, out, err, expect=2)
    assert name in last


def test_report_given_a_file_for_the_reports_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bench = tmp_path / "bench.json"
    bench.write_text("{}")
    code, out, err = run(capsys, "llama-harness", ["report", "--reports", str(bench)])
    last = assert_error_line(code, out, err, expect=2)
    assert f"{bench}: is a file, not a folder" in last and "no such" not in last
    assert "Fix: pass the folder that holds <variant>/bench.json" in last


def test_an_unexpected_exception_is_an_internal_error_line_with_the_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from harness.commands import variants

    def boom(args: argparse.Namespace) -> int:
        raise ZeroDivisionError("division by zero in a new command")

    monkeypatch.setattr(variants, "run", boom)
    code, _out, err = run(capsys, "llama-harness", ["variants"])
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: internal error (ZeroDivisionError: division by zero")
    log = tmp_path / "cache" / "logs" / "llama-harness.log"
    assert f"the traceback is in {log}" in last
    assert "Traceback" in log.read_text() and "ZeroDivisionError" in log.read_text()


def test_split_fix_keeps_the_fix_s_own_parentheses() -> None:
    from saiverse_llm.cli_errors import split_fix
    from saiverse_llm.native import missing_llama_cpp_fix

    fix = missing_llama_cpp_fix()
    assert fix.endswith("lists them)")
    assert split_fix(f"llama-cpp-python is not installed. Fix: {fix}") == (
        "llama-cpp-python is not installed",
        fix,
    )
    # the parenthesis a fix opened is still closed off
    assert split_fix("no wheel (fix: run `llama-harness build cpu`)") == (
        "no wheel",
        "run `llama-harness build cpu`",
    )


@pytest.mark.parametrize("prog", ["llama-harness", "saiverse-llm"])
def test_an_internal_error_is_one_line_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, prog: str
) -> None:
    """The traceback goes to the log file only; the logger's record of it is not a second
    'error: internal error. Fix: see --help' line before the real one."""
    from harness.commands import variants

    def boom(*args: object, **kwargs: object) -> int:
        raise ZeroDivisionError("division by zero in a new command")

    if prog == "llama-harness":
        monkeypatch.setattr(variants, "run", boom)
        argv = ["variants"]
    else:
        monkeypatch.setattr(saiverse_cli, "cmd_list", boom)
        argv = ["list"]
    code, _out, err = run(capsys, prog, argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: internal error (ZeroDivisionError")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LLAMA_HARNESS_N_GPU_LAYERS", "all"),
        ("LLAMA_HARNESS_N_GPU_LAYERS", "4294967296"),
        ("LLAMA_HARNESS_N_THREADS", "100000"),
        ("LLAMA_HARNESS_N_THREADS", "9" * 5000),
        ("LLAMA_HARNESS_BENCH_REPS", "1e9"),
        ("LLAMA_HARNESS_N_BATCH", "\u00b2"),
        ("LLAMA_HARNESS_ISOLATE_WAIT", "nan"),
    ],
)
def test_llama_bench_settings_are_checked_before_any_build(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    argv = ["llama-bench", "--variant", "cpu", "--isolate"]
    code, out, err = run(capsys, "llama-harness", argv)
    last = assert_error_line(code, out, err, expect=2)
    assert f"${name}=" in last


def test_an_ascii_only_stdout_gets_escapes_not_a_crash(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PYTHONIOENCODING=ascii or an ASCII terminal: Japanese names are written as escapes."""
    import io
    import sys

    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "jp.json").write_text(
        json.dumps(
            {
                "model": "jp",
                "provider": "llama_cpp",
                "display_name": "\u65e5\u672c\u8a9e",
                "model_path": "/m/\u30e2\u30c7\u30eb.gguf",
            }
        ),
        encoding="utf-8",
    )
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    err = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    code = saiverse_cli.main(["list", "--dir", str(folder)])
    out.flush()
    err.flush()
    text = out.buffer.getvalue().decode("ascii")  # type: ignore[attr-defined]
    assert code == 0, err.buffer.getvalue()  # type: ignore[attr-defined]
    assert "\\u65e5\\u672c\\u8a9e" in text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("prog", ["llama-harness", "saiverse-llm"])
def test_a_full_disk_under_the_log_file_is_one_warning_not_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prog: str
) -> None:
    if prog == "saiverse-llm":
        argv = ["--log-file", "/dev/full", "list"]
    else:
        logs = tmp_path / "cache" / "logs"
        logs.mkdir(parents=True)
        (logs / "llama-harness.log").symlink_to("/dev/full")
        argv = ["variants"]
    code, _out, err = run(capsys, prog, argv)
    assert code == 0, err
    assert "Traceback" not in err and "Logging error" not in err, err
    warnings = [ln for ln in err.splitlines() if "cannot write the log file" in ln]
    assert len(warnings) == 1 and "Fix: " in warnings[0], err


@pytest.mark.parametrize(
    "argv",
    [
        ["agree", "cpu", "cpu", "--model", "nosuch-model", "--no-write"],
        ["models", "fetch", "nosuch-model"],
        ["models", "path", "nosuch-model"],
    ],
)
def test_an_unknown_test_model_is_a_usage_error_naming_the_known_ones(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, "llama-harness", argv)
    last = assert_error_line(code, out, err, expect=2)
    assert "'nosuch-model'" in last and "tiny" in last.split("Fix:")[1]
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
