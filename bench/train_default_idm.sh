#!/usr/bin/env bash
# Train the GC-IDM shipped beside the Two-Room model (lewm_fast/assets/two_room/idm/idm.pt, the IDM of `lewm-eval
# planner=idm` and of the page's policy mode on the shipped model), evaluate it under the official protocol and record
# how it was made under "idm" in the model's model_card.json. Run after bench/train_default_model.sh (which calls it).
#
#   bench/train_default_idm.sh [workdir]     # default workdir: runs/default_model (its two_room.h5, the model's data)
#
# lewm-train-idm defaults (MLP 3 x 512, 30 epochs, K = 5 frames), the model's own training file and held-out split;
# a few minutes on 2 CPU cores. The package keeps the weights only (no optimiser state), stored in float16 like the
# model's (they load into the fp32 IDM; the largest change of an action over every held-out pair is printed and
# recorded); the evaluation runs on exactly the shipped file.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${1:-runs/default_model}
ASSET=lewm_fast/assets/two_room
TRAIN=(lewm-train-idm "checkpoint=$ASSET" "data.path=$WORK/two_room.h5" "out=$WORK/idm" progress=false)
EVAL=(lewm-eval "checkpoint=$ASSET" planner=idm episodes=50 "out=$WORK/eval_idm")

COMMIT=$(git rev-parse HEAD)
CLEAN=$([ -z "$(git status --porcelain)" ] && echo true || echo false)
rm -rf "$WORK/idm" "$ASSET/idm"
"${TRAIN[@]}"

python - "$WORK/idm" "$ASSET/idm" <<'EOF'
import json, os, sys

import numpy as np
import torch

from lewm_fast.data import ActionCodec
from lewm_fast.io.idm import load_idm, read_idm_file, save_idm
from lewm_fast.training.idm import EpisodeLatents, HindsightPairs

trained, shipped = sys.argv[1:]
full, meta = load_idm(trained)
meta.pop("history", None)  # the per-epoch losses stay in the run's train_idm.json
meta["data"] = os.path.relpath(meta["data"])  # no absolute path of the training machine in the package
save_idm(shipped, load_idm(trained)[0].half(), read_idm_file(trained)["model_hash"], meta)
# what float16 storage changes: every held-out (t, k) pair through the trained and the shipped IDM
half, _ = load_idm(shipped)
norm = json.load(open("lewm_fast/assets/two_room/normalization.json"))
codec = ActionCodec(norm["action"]["mean"], norm["action"]["std"], meta["frameskip"], meta["env_action_dim"])
with np.load(os.path.join(trained, "latents_heldout.npz")) as z:
    pairs = HindsightPairs(EpisodeLatents(z["latents"], z["actions"], z["starts"], z["lengths"], z["episodes"]), codec,
                           meta["frameskip"], meta["horizon"])
rows, k = pairs.all_pairs()
z, goal, remaining, _ = pairs.batch(rows, k)
with torch.no_grad():
    diff = float((full(z, goal, remaining) - half(z, goal, remaining)).abs().max())
json.dump({"max_abs_action_diff_fp16": diff, "heldout_pairs": len(rows)}, open(os.path.join(trained, "fp16_check.json"), "w"))
print(f"{shipped}/idm.pt: float16 weights; largest |fp32 - fp16| normalised action over {len(rows)} held-out pairs: "
      f"{diff:.2e}")
EOF
"${EVAL[@]}"

python - "$ASSET/model_card.json" "$WORK/eval_idm/results.json" "$WORK/idm/train_idm.json" "$WORK/idm/fp16_check.json" \
    "${TRAIN[*]}" "${EVAL[*]}" "$COMMIT" "$CLEAN" <<'EOF'
import json, sys
card_path, results, train_json, fp16_json, train, evaluate, commit, clean = sys.argv[1:]
card, summary, trained = json.load(open(card_path)), json.load(open(results)), json.load(open(train_json))
card["idm"] = {
    "file": "idm/idm.pt",
    "weights": "float16 storage of the fp32 weights (no optimiser state) of lewm-train-idm's idm.pt",
    "commit": commit,
    "working_tree_clean": clean == "true",
    "train": {"command": train, "settings": trained["settings"], "heldout_loss": trained["history"][-1]["heldout_loss"]},
    "fp16_check": json.load(open(fp16_json)),
    "evaluation": {"command": evaluate, **{k: summary[k] for k in (
        "episodes", "successes", "success_rate", "goals", "history_len", "goal_offset", "budget", "seed", "planner")}},
    "script": "bench/train_default_idm.sh",
}
json.dump(card, open(card_path, "w"), indent=1)
print(f"{card_path}: IDM success {summary['successes']}/{summary['episodes']} = {100 * summary['success_rate']:.0f} %")
EOF
du -sh "$ASSET/idm"
