#!/usr/bin/env bash
# The prepared GPU run: install in place, CUDA test suite, benchmarks, plan profile, in one call on a CUDA machine.
#
#   bash bench/device_run.sh [OUT_DIR]        (OUT_DIR defaults to $OUT, else bench/results/device)
#
# The machine needs torch, triton, pytest-benchmark, nvidia-ml-py, transformers and h5py; wheels for anything else
# (hydra-core, omegaconf, antlr4-python3-runtime, gymnasium, ...) are installed offline from .wheels/ when present:
#   pip download --no-deps -d .wheels hydra-core omegaconf antlr4-python3-runtime==4.9.3 gymnasium cloudpickle \
#       farama-notifications
# Each phase has its own time limit (TEST_S, BENCH_S, PROFILE_S seconds) so the whole run fits one 10-minute call.
# Writes: info.json, install.log, tests.log, bench.log, <gpu>-<date>.json (pytest-benchmark), profile-*.txt.
set -uo pipefail

out=${1:-${OUT:-bench/results/device}}
mkdir -p "$out"
test_s=${TEST_S:-240}
bench_s=${BENCH_S:-240}
profile_s=${PROFILE_S:-60}

if compgen -G ".wheels/*.whl" > /dev/null; then
  pip install -q --no-index --find-links .wheels .wheels/*.whl > "$out/install.log" 2>&1 || echo "extra wheels: see install.log"
fi
if ! pip install -q --no-build-isolation --no-deps -e . >> "$out/install.log" 2>&1; then
  echo "install failed:"; tail -n 30 "$out/install.log"; exit 1
fi
lewm-fast info --json > "$out/info.json"
gpu=$(python -c "from lewm_fast.backends import gpu_name_nvml; print((gpu_name_nvml() or 'cpu').replace(' ', '-'))")
stamp=$(date +%F)
echo "device: $gpu  ($stamp)"

timeout "$test_s" python -m pytest tests -q -rs -p no:cacheprovider > "$out/tests.log" 2>&1
echo "tests: rc=$? $(tail -n 1 "$out/tests.log")"

timeout "$bench_s" python -m pytest bench/ --benchmark-only -q -p no:cacheprovider \
  --benchmark-json "$out/$gpu-$stamp.json" --benchmark-columns=min,median,mean,rounds > "$out/bench.log" 2>&1
echo "bench: rc=$? $(tail -n 1 "$out/bench.log")"

timeout "$profile_s" python bench/profile_plan.py --envs 1 > "$out/profile-1env.txt" 2>&1
timeout "$profile_s" python bench/profile_plan.py --envs 50 --plans 1 > "$out/profile-50env.txt" 2>&1
grep -h -E "^(device|plan):" "$out"/profile-*.txt
grep -E "^test_|passed|failed" "$out/bench.log" | head -n 40
