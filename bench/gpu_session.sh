#!/usr/bin/env bash
# One GPU session, as run on the lent H200 (reports/benchmarks.md): every number comes from
# `hsi study` (or bench/recipe.py, which calls the same train_model) on one Ray cluster started
# here, on loopback. Each study has its own working folder under $WORK with the params file it
# ran with, so the exact settings travel with every number.
#
#   WORK=/tmp/work OUT=/tmp/out RAW=data/raw/indian_pines DEADLINE=470 bench/gpu_session.sh
#
# (E) study throughput: 4 hybridsn cells with gpus_per_cell 1, then 0.25. Then, in parallel:
# the leak-free k-fold grid of the 4 variants under two recipes, `base` and `flips` (the recipe
# is then chosen on their validation OA, never on test), svm and rf on the same folds, and the
# paper protocol (4 variants x 3 seeds; hybridsn without a validation carve-out, and with the
# paper's whitened PCA). Last, each leak-free folder is summarised over all six models.
set -u
REPO=$(pwd)
WORK=${WORK:-/tmp/work}
OUT=${OUT:-/tmp/out}
RAW=$(realpath "${RAW:-data/raw/indian_pines}")
DEADLINE=${DEADLINE:-400}
SEEDS=${SEEDS:-"[0]"}
EPOCHS=${EPOCHS:-100}
PATIENCE=${PATIENCE:-20}
GPU_SHARE=${GPU_SHARE:-0.125}
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[$(elapsed) s] $*"; }
mkdir -p "$WORK" "$OUT"
PY=${PY:-python3}
HSI="$PY -m pipeline.cli"
RAY="$PY -m ray.scripts.scripts"

# a working folder: the fetched scene and a params file = params.yaml + the given changes
folder() {
  local dir=$WORK/$1; shift
  mkdir -p "$dir/data/raw"
  cp -rp "$RAW" "$dir/data/raw/"
  (cd "$REPO" && $PY - "$dir/params.yaml" "$@" <<'EOF'
import sys, yaml
from pipeline.params import load_params
out, *changes = sys.argv[1:]
p = load_params("params.yaml")
for kv in changes:
    k, v = kv.split("=", 1)
    p = p.with_protocol(yaml.safe_load(v)) if k == "protocol" else p.override({k: yaml.safe_load(v)})
open(out, "w").write(yaml.safe_dump(p.to_dict(), sort_keys=False))
EOF
  )
}
study() {  # study FOLDER [params file]: run `hsi study` there, log to FOLDER/<params>.log
  local dir=$WORK/$1 file=${2:-params.yaml}
  (cd "$dir" && $HSI --params "$file" study > "${file%.yaml}.log" 2>&1)
}

# EXTRA: more changes for every folder, e.g. a crop for a quick rehearsal on a CPU
common=(tracking.enabled=false study.engine=ray study.address=auto "train.epochs=$EPOCHS"
        "train.early_stopping=$PATIENCE" ${EXTRA:-})
cnns="[hybridsn, hybridsn_dsc, hybridsn_se, hybridsn_2d3d]"

say "GPU: $(nvidia-smi -L 2>/dev/null | head -1)"
export RAY_AUTH_MODE=disabled  # a loopback-only cluster of one session: no other client exists
$RAY start --head --temp-dir="$WORK/ray" --node-ip-address=127.0.0.1 --port=6390 \
  --num-cpus="$(nproc)" --num-gpus="${NUM_GPUS:-1}" --include-dashboard=false \
  --disable-usage-stats >"$WORK/ray.log" 2>&1 || { cat "$WORK/ray.log"; exit 1; }
export RAY_ADDRESS=127.0.0.1:6390
say "ray up"

# (E) cells per hour: 4 hybridsn cells (leak-free folds 0-3), 10 epochs each
folder E "${common[@]}"
for g in ${THROUGHPUT_GPUS-1 0.25}; do
  (cd "$WORK/E" && $PY "$REPO/bench/recipe.py" --params params.yaml --raw "$RAW" --out "thr$g" \
     --recipes base --folds 0 1 2 3 --epochs 10 --early-stopping 0 --engine ray --address auto \
     --gpus-per-cell "$g" > "thr$g.log" 2>&1)
  say "throughput gpus_per_cell=$g: $(grep -o '"wall_s": [0-9.]*' "$WORK/E/thr$g/recipe.json")"
done

lf=(protocol=leakfree study.protocol=leakfree "study.seeds=$SEEDS")
folder LFbase "${common[@]}" "${lf[@]}" "study.models=$cnns" "study.gpus_per_cell=$GPU_SHARE"
folder LFflips "${common[@]}" "${lf[@]}" "study.models=$cnns" "study.gpus_per_cell=$GPU_SHARE" \
  train.augment=flips
folder LFsvm "${common[@]}" "${lf[@]}" "study.models=[svm, rf]" study.gpus_per_cell=0 \
  study.cpus_per_cell=2
folder P0 "${common[@]}" study.protocol=paper "study.models=$cnns" "study.seeds=[0, 1, 2]" \
  "study.gpus_per_cell=$GPU_SHARE"
folder P1 "${common[@]}" study.protocol=paper "study.models=[hybridsn]" "study.seeds=[0, 1, 2]" \
  split.val_fraction=0 "study.gpus_per_cell=$GPU_SHARE"
folder P2 "${common[@]}" study.protocol=paper "study.models=[hybridsn]" "study.seeds=[0, 1, 2]" \
  split.val_fraction=0 pca.whiten=true pca.scale=none "study.gpus_per_cell=$GPU_SHARE"
# the leak-free grid first; the paper protocol once it is done, or at PAPER_AT seconds
lf_pids=()
for d in ${LF_STUDIES-LFflips LFbase LFsvm}; do study "$d" & lf_pids+=($!); sleep 2; done
say "started: ${LF_STUDIES-LFflips LFbase LFsvm}"
PAPER_AT=${PAPER_AT:-$(( DEADLINE - 170 ))}
p_pids=()
while :; do
  running=0
  for pid in "${lf_pids[@]}"; do kill -0 "$pid" 2>/dev/null && running=1; done
  if [ ${#p_pids[@]} -eq 0 ] && { [ $running -eq 0 ] || [ "$(elapsed)" -ge "$PAPER_AT" ]; }; then
    for d in ${P_STUDIES-P0 P1 P2}; do study "$d" & p_pids+=($!); sleep 2; done
    say "started: ${P_STUDIES-P0 P1 P2}"
  fi
  others=0
  for pid in "${p_pids[@]}"; do kill -0 "$pid" 2>/dev/null && others=1; done
  [ $running -eq 0 ] && [ ${#p_pids[@]} -gt 0 ] && [ $others -eq 0 ] && break
  [ "$(elapsed)" -ge "$DEADLINE" ] && { say "deadline: stopping the studies"; break; }
  sleep 5
done
say "cells done: $(for d in LFflips LFbase LFsvm P0 P1 P2; do echo -n "$d=$(grep -c 'done on' "$WORK/$d/params.log" 2>/dev/null) "; done)"
for pid in "${lf_pids[@]}" "${p_pids[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done

# svm and rf join each leak-free folder; each is then summarised over all six models
for d in LFbase LFflips; do
  [ -d "$WORK/$d/reports" ] || continue
  cp -r "$WORK/LFsvm/reports" "$WORK/LFsvm/models" "$WORK/$d/" 2>/dev/null
  (cd "$WORK/$d" && $PY - <<'EOF'
import yaml
import glob
p = yaml.safe_load(open("params.yaml"))
folds = p["study"]["folds"] or list(range(p["split"]["folds"]))
done = lambda m: all(glob.glob(f"reports/*/study/leakfree/cells/{m}-seed*-fold{k}/metrics.json")
                     for k in folds)
p["study"]["models"] = [m for m in p["study"]["models"] + ["svm", "rf"] if done(m)]
print("summarising", p["study"]["models"])
yaml.safe_dump(p, open("params.all.yaml", "w"), sort_keys=False)
EOF
  )
  (cd "$WORK/$d" && timeout ${SUMMARY_TIMEOUT:-60} $HSI --params params.all.yaml study > params.all.log 2>&1) &
done
wait
say "summaries: $(ls "$WORK"/*/reports/indian_pines/study/*/summary.md 2>/dev/null | tr '\n' ' ')"
(cd "$REPO" && $PY - "$WORK" > "$WORK/recipe_choice.md" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
work = Path(sys.argv[1])
rows = {}
for d in ("LFbase", "LFflips"):
    cells = sorted((work / d).glob("reports/*/study/leakfree/cells/hybridsn*/train.json"))
    vals = [json.loads(c.read_text())["best_val_oa"] for c in cells]
    rows[d] = (np.mean(vals) if vals else float("nan"), len(vals))
print("| recipe | CNN cells | mean validation OA (%) |\n|---|---:|---:|")
for d, (v, n) in rows.items():
    print(f"| {d[2:]} | {n} | {100 * v:.2f} |")
best = max(rows, key=lambda d: rows[d][0] if rows[d][1] else -1)
print(f"\nchosen on validation OA: {best[2:]}")
EOF
)
cat "$WORK/recipe_choice.md"
$RAY stop --force >/dev/null 2>&1
say "packing"
(cd "$WORK" && find . \( -name '*.md' -o -name '*.json' -o -name '*.csv' -o -name '*.log' \
   -o -name 'params*.yaml' -o -name 'variants_maps.png' -o -name 'oa_ci.png' \
   -o -path '*/predictions/*.npy' \) -not -path './*/data/*' -not -path './ray/*' -print0 \
   | tar czf "$OUT/results.tgz" --null -T -)
ls -la "$OUT"
say "done"
