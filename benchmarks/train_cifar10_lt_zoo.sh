#!/usr/bin/env bash
# Trains the pretrained CIFAR-10-LT zoo (issues 6 and 15) in order, one run after another,
# resumable: rerun the script after an interruption and every run continues from its last
# epoch; finished runs are skipped.
#   NPE_DATA_DIR=../shared/data nohup nice -n 10 benchmarks/train_cifar10_lt_zoo.sh >> zoo/train.log 2>&1 &
# Runs land in zoo/<name>/ (config.json, log.jsonl, checkpoint.pt, model.safetensors, metrics.json). Each run
# that finishes here is shipped at once (export/package_pretrained.py: weights, manifest, Hub folder);
# ZOO_PACKAGE=0 turns that off (e.g. with another ZOO_DIR).
# On a CPU shared with other jobs, prefix OMP_NUM_THREADS=1 (or OMP_WAIT_POLICY=PASSIVE): spinning
# OpenMP threads collapse throughput there (7.6 vs 50.1 images/s measured), while on an idle
# machine passive waiting costs 1.3x (267.8 vs 347.2 images/s, ResNet-32 + 16 PEMs, batch 64).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${ZOO_DIR:-zoo}
data=${NPE_DATA_DIR:-../shared/data}
common=(--dataset cifar10 --data-dir "$data" --deterministic --no-progress)

run() {  # run NAME SEED ARGS...: train (or resume, or skip when finished) one run
  local name=$1 seed=$2; shift 2
  local resume=()
  [[ -f "$out/$name/config.json" ]] && resume=(--resume)  # resuming a run that never started is an error
  local finished=0
  [[ -f "$out/$name/metrics.json" ]] && finished=1
  echo "=== $(date -u +%FT%TZ) $name"
  npe-models train "${common[@]}" --seed "$seed" --out "$out/$name" "${resume[@]}" "$@"
  if (( ! finished )) && [[ "${ZOO_PACKAGE:-1}" == 1 ]]; then
    python export/package_pretrained.py "$out/$name" --data-dir "$data"
  fi
}

method_runs() {  # method_runs RHO RECIPE SEED SUFFIX: NPE(16), CE, LA, NPE(1), then cRT and post-hoc LA
  local rho=$1 hp=$2 seed=$3 sfx=$4
  run "resnet32_npe16_r${rho}_${hp}${sfx}" "$seed" --model resnet32_npe16 --method npe --recipe "$hp" --rho "$rho"
  run "resnet32_ce_r${rho}_${hp}${sfx}" "$seed" --model resnet32 --method ce --recipe "$hp" --rho "$rho"
  run "resnet32_la_r${rho}_${hp}${sfx}" "$seed" --model resnet32 --method la --recipe "$hp" --rho "$rho"
}

# Issue 6: rho = 100, seed 0.
method_runs 100 hp2 0 ""
run resnet32_npe1_r100_hp2 0 --model resnet32_npe1 --method npe --recipe hp2 --rho 100
run resnet32_crt_r100_hp2 0 --model resnet32 --method crt --recipe hp2 --rho 100 --init "$out/resnet32_ce_r100_hp2"
run resnet32_posthoc_la_r100_hp2 0 --model resnet32 --method posthoc_la --recipe hp2 --rho 100 --init "$out/resnet32_ce_r100_hp2"
method_runs 100 hp1 0 ""

# Issue 15, in its order.
# 1. LA HP-1 again, on one device from start to end (the shipped run switched GPU -> CPU at epoch 39).
run resnet32_la_r100_hp1_onedevice 0 --model resnet32 --method la --recipe hp1 --rho 100
# 2. rho = 50 and 200 under HP-2, with cRT and post-hoc LA from each CE run.
for rho in 50 200; do
  method_runs "$rho" hp2 0 ""
  run "resnet32_npe1_r${rho}_hp2" 0 --model resnet32_npe1 --method npe --recipe hp2 --rho "$rho"
  run "resnet32_crt_r${rho}_hp2" 0 --model resnet32 --method crt --recipe hp2 --rho "$rho" --init "$out/resnet32_ce_r${rho}_hp2"
  run "resnet32_posthoc_la_r${rho}_hp2" 0 --model resnet32 --method posthoc_la --recipe hp2 --rho "$rho" --init "$out/resnet32_ce_r${rho}_hp2"
done
# 3. Seeds 1 and 2 at rho = 100, HP-2.
for seed in 1 2; do method_runs 100 hp2 "$seed" "_s${seed}"; done
# 4. Table 3: 4 and 8 PEMs.
for k in 4 8; do
  run "resnet32_npe${k}_r100_hp2" 0 --model "resnet32_npe${k}" --method npe --recipe hp2 --rho 100
done
# 5. rho = 50 and 200 under HP-1.
for rho in 50 200; do method_runs "$rho" hp1 0 ""; done
# 1b. LA HP-1 seed 1 "if time allows": last, so that it does not hold back the new rows above.
run resnet32_la_r100_hp1_onedevice_s1 1 --model resnet32 --method la --recipe hp1 --rho 100  # and seed 1
echo "=== $(date -u +%FT%TZ) all runs finished"
