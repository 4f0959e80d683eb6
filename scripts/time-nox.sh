#!/usr/bin/env bash
# Measure the times README.md states: a cold `nox` (empty harness cache, empty ccache, fresh
# nox venvs) and then a warm one, session by session, with the machine's load.
#
#   scripts/time-nox.sh [OUT_DIR]        default OUT_DIR: /tmp/llama-harness-timing
#
# Run it from an activated project venv on an IDLE machine (the figures are wall-clock);
# the load average before and after each session is printed next to its time. The cold run
# downloads the pinned sdist from PyPI like a first run does. Everything it writes stays in
# OUT_DIR (delete it afterwards); the real cache (~/.cache/llama-harness) is not touched.
# TIME_NOX_SESSIONS="lint build-cpu" limits it to some sessions (default: plain `nox`'s).
# TIME_NOX_RUNS=warm times only the warm run, in an OUT_DIR a cold run filled before (kept,
# its times.md appended to); default "cold warm".
# Each session's output is redirected (as in CI) and every line is stamped with the second it
# arrived (OUT_DIR/<run>-<session>.log); the summary gives each session's longest silence,
# which must stay under 30 s (a progress line at least every 30 s in a log).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${1:-/tmp/llama-harness-timing}
runs=${TIME_NOX_RUNS:-cold warm}
case " $runs " in
    *" cold "*) rm -rf "$out" ;;
    *) [ -d "$out/cache" ] || { echo "error: $out holds no cold run. Fix: run with TIME_NOX_RUNS unset first" >&2; exit 2; } ;;
esac
mkdir -p "$out"
export LLAMA_HARNESS_CACHE="$out/cache" CCACHE_DIR="$out/ccache" LLAMA_HARNESS_REPORTS="$out/reports"
sessions=${TIME_NOX_SESSIONS:-$(python -c 'from harness import sessions; print(" ".join(sessions.default_sessions()))')}
# Stamp each line with the second it arrived (bash's printf %()T: no fork per line).
stamp() { while IFS= read -r line || [ -n "$line" ]; do printf '%(%s)T %s\n' -1 "$line"; done; }
# Longest gap in seconds between consecutive stamped lines of a log.
silence() { awk 'NR > 1 && $1 - t > g { g = $1 - t } { t = $1 } END { printf "%d", g }' "$1"; }
load() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo "?"; }
summary="$out/times.md"
if [[ " $runs " == *" cold "* ]] || [ ! -f "$summary" ]; then {
    echo "machine: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; ccache: $(command -v ccache || echo none)"
    echo
    echo "| run | session | seconds | load before | load after | longest silence (s) |"
    echo "| --- | --- | --- | --- | --- | --- |"
} > "$summary"
fi
for run in $runs; do
    total=0
    for s in $sessions; do
        before=$(load)
        start=$(date +%s)
        { rc=0; nox --envdir "$out/nox" -s "$s" 2>&1 || rc=$?; echo "$rc" > "$out/$run-$s.rc"; } \
            | stamp > "$out/$run-$s.log"
        rc=$(cat "$out/$run-$s.rc")
        took=$(( $(date +%s) - start ))
        total=$(( total + took ))
        note=""
        [ "$rc" -eq 0 ] || note=" (exit $rc, see $out/$run-$s.log)"
        echo "| $run | $s$note | $took | $before | $(load) | $(silence "$out/$run-$s.log") |" >> "$summary"
        echo "$run $s: ${took} s$note"
    done
    echo "| $run | **total** | $total | | | |" >> "$summary"
    # A cold run compiles each object once: a ccache hit here means a second compile of it.
    [ "$run" = cold ] && command -v ccache > /dev/null \
        && ccache -s > "$out/ccache-after-cold.txt" 2>&1 || true
done
# ninja steps that compile a source file: "[N/M] ... -c file.cpp" (pip -v) or "Building C..."
compiles=$(cat "$out"/cache/logs/*.log 2>/dev/null \
    | grep -Ec '^\s*\[[0-9]+/[0-9]+\] (.* -c |Building C)' || true)
echo >> "$summary"
echo "C/C++ objects compiled in all build logs (wheel + native tools): $compiles" >> "$summary"
[ -f "$out/ccache-after-cold.txt" ] && {
    echo "ccache after the cold run (a hit = an object compiled a second time):"
    echo '```'; cat "$out/ccache-after-cold.txt"; echo '```'
} >> "$summary"
cat "$summary"
