#!/bin/bash
# Copies one LOSO workdir's tables and held-out metrics here, under NAME (as results/loso_multisource_128px/
# holds the baseline's):  bash results/loso_recipes_multisource_128px/collect.sh NAME WORKDIR
set -euo pipefail
name=$1 workdir=$2 here=$(dirname "$0")/$1
mkdir -p "$here"
cp "$workdir"/loso.{md,csv,json,png} "$here"/
for run in "$workdir"/runs/without_*_fold0; do
  if [ ! -f "$run/eval_held_out/metrics.json" ]; then
    echo "skipped $run: not finished (no eval_held_out/metrics.json)" >&2; continue
  fi
  out="$here/$(basename "$run" _fold0)"
  mkdir -p "$out"
  cp "$run/eval_held_out/metrics.json" "$out/held_out_metrics.json"
  cp "$run/eval_held_out/report.md" "$out/held_out_report.md"
done
