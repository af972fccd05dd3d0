#!/usr/bin/env bash
# Train the Two-Room LeWM shipped in lewm_fast/assets/two_room (the default model of `lewm-fast web`), then evaluate
# it under the official protocol (lewm-eval defaults: 50 episodes, goals from the run's held-out episodes, history 1,
# CEM 300 x 30) and record how it was made in its model_card.json.
#
#   bench/train_default_model.sh [workdir]     # default workdir: runs/default_model (data, run, eval)
#
# CPU preset (cpu_small model, 64 px frames, batch 16, 4 epochs); about 45 min on 2 busy CPU cores (training 40 min,
# evaluation a few minutes).
# The weights are stored in float16 (half the size; they load into the fp32 model); the evaluation runs on exactly
# the shipped files. Needs the `lewm-fast[onnx]` extra (the latent PCA is computed by the ONNX export).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/default_model}
ASSET=lewm_fast/assets/two_room
EPISODES=200     # Two-Room episodes collected with the default (stable-worldmodel) expert policy
DATA_SEED=0      # lewm-collect seed: episode i is seeded from (DATA_SEED, i)
TRAIN_SEED=0     # lewm-train seed (init, batches, held-out split)

COLLECT=(lewm-collect env=two_room "episodes=$EPISODES" image_size=64 "seed=$DATA_SEED" "out=$WORK/two_room.h5"
         overwrite=true progress=false)
TRAIN=(lewm-train --fused-sigreg "data.path=$WORK/two_room.h5" "out=$WORK/run" "seed=$TRAIN_SEED")
EVAL=(lewm-eval "checkpoint=$ASSET" episodes=50 "out=$WORK/eval")

COMMIT=$(git rev-parse HEAD)  # the code the model is trained with
CLEAN=$([ -z "$(git status --porcelain)" ] && echo true || echo false)
mkdir -p "$WORK"
rm -rf "$WORK/run"
"${COLLECT[@]}"
"${TRAIN[@]}"
checkpoint=$(ls -d "$WORK"/run/checkpoints/step_* | sort | tail -n 1)

rm -rf "$ASSET"
mkdir -p "$ASSET"
cp "$checkpoint/config.json" "$checkpoint/normalization.json" "$ASSET/"
python - "$checkpoint/weights.pt" "$ASSET/weights.pt" <<'EOF'
import sys, torch
weights = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
torch.save({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, sys.argv[2])
EOF
lewm-fast export-onnx "checkpoint=$ASSET" "out=$WORK/onnx"  # the latent PCA from the training file
cp "$WORK/onnx/latent_pca.json" "$ASSET/"
"${EVAL[@]}"

python - "$ASSET/model_card.json" "$WORK/eval/results.json" "$checkpoint" "$EPISODES" "$DATA_SEED" "$TRAIN_SEED" \
    "${COLLECT[*]}" "${TRAIN[*]}" "${EVAL[*]}" "$COMMIT" "$CLEAN" <<'EOF'
import json, sys
card, results, checkpoint, episodes, data_seed, train_seed, collect, train, evaluate, commit, clean = sys.argv[1:]
summary = json.load(open(results))
json.dump({
    "model": "LeWM cpu_small (ViT 4x128 on 64 px frames in 16 px patches, predictor 3 blocks), Two-Room",
    "weights": "float16 storage of the fp32 weights of " + checkpoint.split("/run/")[-1],
    "commit": commit,
    "working_tree_clean": clean == "true",
    "data": {"episodes": int(episodes), "seed": int(data_seed), "command": collect},
    "train": {"seed": int(train_seed), "command": train},
    "evaluation": {"command": evaluate, **{k: summary[k] for k in (
        "episodes", "successes", "success_rate", "goals", "history_len", "goal_offset", "budget", "seed",
        "plan_latency_mean_after_first_s", "planner")}},
    "script": "bench/train_default_model.sh",
}, open(card, "w"), indent=1)
print(f"{card}: success {summary['successes']}/{summary['episodes']} = {100 * summary['success_rate']:.0f} %")
EOF
bench/train_default_idm.sh "$WORK"  # the GC-IDM shipped beside it (lewm_fast/assets/two_room/idm)
du -sh "$ASSET"
