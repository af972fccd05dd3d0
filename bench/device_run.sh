#!/usr/bin/env bash
# The prepared GPU run: install in place, CUDA test suite, benchmarks, plan profile, in one call on a CUDA machine.
#
#   bash bench/device_run.sh [OUT_DIR]        (OUT_DIR defaults to $OUT, else bench/results/device)
#
# The machine needs torch, triton, pytest-benchmark, nvidia-ml-py, transformers and h5py; wheels for anything else
# (hydra-core, omegaconf, antlr4-python3-runtime, gymnasium, ...) are installed offline from .wheels/ when present:
#   pip download --no-deps -d .wheels hydra-core omegaconf antlr4-python3-runtime==4.9.3 gymnasium cloudpickle \
#       farama-notifications
# Each phase has its own time limit (see below) so the whole run fits one 10-minute device call.
# Writes: info.json, install.log, aot.log + triton-aot-<triton>-device.json (compile check of the paper-shape
# specializations with this machine's triton), tests-gpu.log, tests-rest.log, first-plan-{cold,warmup}.txt (first plan
# on an empty Triton cache, without / with lewm_fast.warmup), bench-*.log, <gpu>-<date>-<suite>.json
# (pytest-benchmark), profile-*.txt, gpu-model.json + gpu-model.txt (bench/gpu_model.py: the cost model's ESTIMATE for
# this GPU, traced on the CPU while the test phases run) and gpu-model-vs-measured.txt (estimate beside measurement).
set -uo pipefail

out=${1:-${OUT:-bench/results/device}}
mkdir -p "$out"
# phase time limits (seconds): with about 60 s of install they add up to one device call of timeout_s=600
aot_s=${AOT_S:-40}
gpu_test_s=${GPU_TEST_S:-100}
rest_test_s=${REST_TEST_S:-40}
first_plan_s=${FIRST_PLAN_S:-40}
declare -A bench_s=([sigreg]=${BENCH_SIGREG_S:-50} [rollout]=${BENCH_ROLLOUT_S:-75} [plan]=${BENCH_PLAN_S:-110}
                    [gradient]=${BENCH_GRADIENT_S:-60}  # gradient: GD plans, fused backward vs reference autograd
                    [tiles]=${BENCH_TILES_S:-30})  # tiles: each fused kernel, wide vs 16-row tiles vs torch ops
profile_s=${PROFILE_S:-20}
model_s=${MODEL_S:-150}  # runs on the CPU in the background during the AOT and test phases (not a GPU phase)

if compgen -G ".wheels/*.whl" > /dev/null; then
  pip install -q --no-index --find-links .wheels .wheels/*.whl > "$out/install.log" 2>&1 || echo "extra wheels: see install.log"
fi
if ! pip install -q --no-build-isolation --no-deps -e . >> "$out/install.log" 2>&1; then
  echo "install failed:"; tail -n 30 "$out/install.log"; exit 1
fi
python -c "from lewm_fast.cli.info import main; main(['info', '--json'])" > "$out/info.json"
gpu=$(python -c "from lewm_fast.backends import gpu_name_nvml; print((gpu_name_nvml() or 'cpu').replace(' ', '-'))")
stamp=$(date +%F)
echo "device: $gpu  ($stamp)"

# the cost model's estimate for this GPU (device picked from the NVML name), at the shapes the benchmarks measure; CPU
# only, so it runs beside the phases that time nothing and is waited for before the timed ones
timeout "$model_s" python bench/gpu_model.py --device auto --envs 1 50 --history 3 --sensitivity \
  --json "$out/gpu-model.json" > "$out/gpu-model.txt" 2>&1 &
model_pid=$!

# the compile check needs no GPU (CI runs it for sm_80/sm_90); here it records this machine's triton on the paper shapes
triton_version=$(python -c "import triton; print(triton.__version__)")
timeout "$aot_s" python -m lewm_fast.aot --arch 90 --only paper --quiet --out "$out/triton-aot-$triton_version-device.json" \
  > "$out/aot.log" 2>&1
echo "aot compile check (triton $triton_version, sm_90): rc=$? $(tail -n 1 "$out/aot.log")"

# pytest as a module without the repository root on sys.path (PYTHONSAFEPATH, Python >= 3.11): from the root, the
# top-level kernels/ folder would shadow HuggingFace's `kernels` package, which transformers probes for
pytest_m="env PYTHONSAFEPATH=1 python -m pytest"

# the suites with CUDA cases (CI runs the whole suite on CPU); test_training needs hydra-core/omegaconf (.wheels/)
gpu_tests="tests/test_kernels_predictor.py tests/test_kernels_elite_refit.py tests/test_sigreg_op.py
  tests/test_rollout_engine.py tests/test_planners.py tests/test_elite_refit_op.py"
timeout "$gpu_test_s" $pytest_m $gpu_tests -q -rs -p no:cacheprovider > "$out/tests-gpu.log" 2>&1
echo "CUDA suites: rc=$? $(tail -n 1 "$out/tests-gpu.log")"
timeout "$rest_test_s" $pytest_m tests/test_training.py tests/test_backends.py -q -rs -p no:cacheprovider \
  > "$out/tests-rest.log" 2>&1
echo "training/backends: rc=$? $(tail -n 1 "$out/tests-rest.log")"

wait "$model_pid"
echo "gpu cost model (estimate): rc=$? $(grep -m1 -E '^model:' "$out/gpu-model.txt" | cut -c1-100)"

# the first plan on an empty Triton cache: compiling on demand vs lewm_fast.warmup first (fresh process each)
for variant in cold warmup; do
  flag=$([ "$variant" = warmup ] && echo --warmup)
  TRITON_CACHE_DIR=$(mktemp -d) timeout "$first_plan_s" python bench/first_plan.py $flag > "$out/first-plan-$variant.txt" 2>&1
  echo "first plan ($variant): rc=$? $(grep -h -E '^(warmup|first plan)' "$out/first-plan-$variant.txt" | tr '\n' ' ')"
done

# one pytest-benchmark JSON per file, so a file that runs out of time does not cost the others their results
for suite in sigreg rollout plan gradient tiles; do
  timeout "${bench_s[$suite]}" $pytest_m "bench/test_bench_$suite.py" --benchmark-only -q -p no:cacheprovider \
    --benchmark-json "$out/$gpu-$stamp-$suite.json" --benchmark-columns=min,median,mean,rounds \
    > "$out/bench-$suite.log" 2>&1
  echo "bench $suite: rc=$? $(tail -n 1 "$out/bench-$suite.log")"
done

timeout "$profile_s" python bench/profile_plan.py --envs 1 > "$out/profile-1env.txt" 2>&1
timeout "$profile_s" python bench/profile_plan.py --envs 50 --plans 1 > "$out/profile-50env.txt" 2>&1
grep -h -E "^(device|plan):" "$out"/profile-*.txt
grep -h -E "^test_" "$out"/bench-*.log | head -n 40

# estimate beside measurement: the first GPU run calibrates bench/gpu_devices.py
python bench/gpu_model_compare.py "$out" > "$out/gpu-model-vs-measured.txt" 2>&1
cat "$out/gpu-model-vs-measured.txt"
