#!/usr/bin/env bash
# GPU proof, run on the H100 host from the repo root: install the CUDA bundle built on the
# CPU-only dev machine offline, verify it, exercise it, run the client suite with all layers on
# the GPU (test-cuda), the doctor, and bench on GPU vs the host's CPU, then the report.
set -u
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-run.log") 2>&1
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
QUICK=${QUICK:-0}   # QUICK=1: a local smoke run of this script (no GPU)

step host
nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
BASEPY=${BASEPY:-python3}; "$BASEPY" -V; nproc

step "CUDA runtime + cuBLAS for the wheel (its RUNPATH names the build machine's folder)"
LIBS=$(find /usr/local /opt /usr/lib /root/.cache/llama-harness/toolchains \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' -o -name 'libcublasLt.so.13' \) 2>/dev/null | xargs -r -n1 dirname | sort -u | paste -sd:)
echo "LD_LIBRARY_PATH += $LIBS"
export LD_LIBRARY_PATH="$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

OLDPWD_REPO=$PWD; W=/tmp/gpuwork; rm -rf "$W"; mkdir -p "$W/b"
step "bundle: extract, sha256 check, offline install into a fresh venv"
ls -la .gpu/cuda-bundle.tar.gz
tar -xzf .gpu/cuda-bundle.tar.gz -C "$W/b" && (cd "$W/b" && sha256sum -c --quiet SHA256SUMS) && echo "bundle checksums OK"
"$BASEPY" -m venv --system-site-packages "$W/v"
# The host's python3 may itself be a venv (/opt/torch/.venv): --system-site-packages would not see
# its packages, so point the new venv at them with a .pth file.
"$BASEPY" -c 'import site; print("\n".join(site.getsitepackages()))' > "$("$W/v/bin/python" -c 'import site; print(site.getsitepackages()[0])')/host-site.pth"
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 "$W/v/bin/pip" install -q --no-index --find-links "$W/b/wheels" \
  "$W"/b/wheels/llama_cpp_python-*.whl "$W"/b/wheels/saiverse_llama_harness-*.whl gguf diskcache
PY="$W/v/bin/python"
export HF_HUB_OFFLINE=1 LLAMA_HARNESS_CACHE="$W/b/cache" LLAMA_HARNESS_REPORTS="$OUT/reports"
TINY="$W/b/cache/models/synth-tiny-s0.gguf"
cd "$W/b/project"

step "verify: is the installed llama_cpp the cuda variant?"
"$PY" -m harness.build.verify cuda --python "$PY"; echo "verify rc=$?"
step "exercise in a child process, n_gpu_layers=-1"
"$PY" -m harness.build.exercise --python "$PY" --model "$TINY" --n-gpu-layers -1; echo "exercise rc=$?"

step "test-cuda: the client suite, all layers on the GPU (LLAMA_HARNESS_REQUIRE_GPU=1)"
K=(); [ "$QUICK" = 1 ] && K=(-k "offload or usage")
LLAMA_HARNESS_VARIANT=cuda LLAMA_HARNESS_N_GPU_LAYERS=-1 LLAMA_HARNESS_REQUIRE_GPU=1 LLAMA_HARNESS_MODELS=tiny \
  "$PY" -m pytest tests/client -p no:cacheprovider -rs -q "${K[@]}" --junitxml="$OUT/client-junit.xml" 2>&1 | tail -60
echo "client suite rc=${PIPESTATUS[0]}"

step "doctor"
"$PY" -m harness.cli doctor --model "$TINY" --markdown "$OUT/doctor.md" 2>&1 | tail -60; echo "doctor rc=${PIPESTATUS[0]}"

R=(); [ "$QUICK" = 1 ] && export LLAMA_HARNESS_BENCH_ROUNDS=1
step "bench-cuda: GPU, all layers (tiny + synth-1b)"
mkdir -p "$OUT/reports/cuda" "$OUT/reports/cuda-on-cpu"
M=tiny,synth-1b; [ "$QUICK" = 1 ] && M=tiny
LLAMA_HARNESS_VARIANT=cuda LLAMA_HARNESS_N_GPU_LAYERS=-1 LLAMA_HARNESS_REQUIRE_GPU=$([ "$QUICK" = 1 ] && echo 0 || echo 1) LLAMA_HARNESS_MODELS=$M \
  "$PY" -m pytest benchmarks -p no:cacheprovider -q --benchmark-json="$OUT/reports/cuda/bench.json" 2>&1 | tail -40
echo "bench gpu rc=${PIPESTATUS[0]}"
step "same build on the host's CPU (n_gpu_layers=0), fewer rounds"
LLAMA_HARNESS_VARIANT=cuda-on-cpu LLAMA_HARNESS_N_GPU_LAYERS=0 LLAMA_HARNESS_MODELS=$M LLAMA_HARNESS_BENCH_ROUNDS=${LLAMA_HARNESS_BENCH_ROUNDS:-3} \
  "$PY" -m pytest benchmarks -p no:cacheprovider -q -k "pp or tg" --benchmark-json="$OUT/reports/cuda-on-cpu/bench.json" 2>&1 | tail -30
echo "bench cpu rc=${PIPESTATUS[0]}"

step report
"$PY" -m harness.cli report -o "$OUT/report" 2>&1 | tail -40
cp "$OUT"/report/*.md "$OUT/" 2>/dev/null
step "the harness's own offline path: llama-harness bundle run BUNDLE -- test-cuda"
cd "$OLDPWD_REPO"
LLAMA_HARNESS_REPORTS="$OUT/bundle-run-reports" PYTHONPATH="$OLDPWD_REPO" timeout 300 "$BASEPY" -m harness.ship.bundle run .gpu/cuda-bundle.tar.gz -- test-cuda -q -p no:cacheprovider -rs $([ "$QUICK" = 1 ] && echo "-k offload") 2>&1 | tail -25
echo "bundle run rc=${PIPESTATUS[0]}"
step "done"
tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz . 2>/dev/null
ls -la "$OUT" "$OUT/report" 2>/dev/null
# keep what comes back under the 8-file limit: everything is in all.tar.gz
find "$OUT" -mindepth 1 -maxdepth 1 ! -name all.tar.gz ! -name gpu-run.log ! -name doctor.md ! -name report.md -exec rm -rf {} +
