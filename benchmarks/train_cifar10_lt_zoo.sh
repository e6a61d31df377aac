#!/usr/bin/env bash
# Trains the pretrained CIFAR-10-LT zoo (issue 6) in order, one run after another, resumable:
# rerun the script after an interruption and every run continues from its last epoch.
#   NPE_DATA_DIR=../shared/data nohup nice -n 10 benchmarks/train_cifar10_lt_zoo.sh > zoo/train.log 2>&1 &
# Runs land in zoo/<name>/ (config.json, log.jsonl, checkpoint.pt, model.safetensors, metrics.json).
# On a CPU shared with other jobs, prefix OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads collapse
# throughput there (7.6 vs 50.1 images/s measured), while on an idle machine passive waiting costs
# 1.3x (267.8 vs 347.2 images/s, ResNet-32 + 16 PEMs, batch 64).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${ZOO_DIR:-zoo}
common=(--dataset cifar10 --data-dir "${NPE_DATA_DIR:-../shared/data}" --seed 0 --deterministic --no-progress)

run() {  # run NAME ARGS...: train (or resume, or skip when finished) one run
  local name=$1; shift
  echo "=== $(date -u +%FT%TZ) $name"
  npe-models train "${common[@]}" --out "$out/$name" --resume "$@"
}

for rho in 100; do
  run "resnet32_npe16_r${rho}_hp2" --model resnet32_npe16 --method npe --recipe hp2 --rho $rho
  run "resnet32_ce_r${rho}_hp2" --model resnet32 --method ce --recipe hp2 --rho $rho
  run "resnet32_la_r${rho}_hp2" --model resnet32 --method la --recipe hp2 --rho $rho
  run "resnet32_npe1_r${rho}_hp2" --model resnet32_npe1 --method npe --recipe hp2 --rho $rho
  run "resnet32_crt_r${rho}_hp2" --model resnet32 --method crt --recipe hp2 --rho $rho --init "$out/resnet32_ce_r${rho}_hp2"
  run "resnet32_posthoc_la_r${rho}_hp2" --model resnet32 --method posthoc_la --recipe hp2 --rho $rho --init "$out/resnet32_ce_r${rho}_hp2"
done
run resnet32_npe16_r100_hp1 --model resnet32_npe16 --method npe --recipe hp1 --rho 100
run resnet32_ce_r100_hp1 --model resnet32 --method ce --recipe hp1 --rho 100
run resnet32_la_r100_hp1 --model resnet32 --method la --recipe hp1 --rho 100
for rho in 50 200; do
  run "resnet32_npe16_r${rho}_hp2" --model resnet32_npe16 --method npe --recipe hp2 --rho $rho
  run "resnet32_ce_r${rho}_hp2" --model resnet32 --method ce --recipe hp2 --rho $rho
done
echo "=== $(date -u +%FT%TZ) all runs finished"
