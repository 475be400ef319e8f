#!/usr/bin/env bash
# Issue 18: SimCLR's accuracy against epochs on the cpu preset's data, backbone and batch, one seed per suite, the
# measurement that fixes each suite's `standard` epochs (docs/results.md §9). One thread per run.
#   SUITES="digits_transfer cifar10_subset" scripts/standard_curves.sh
#   METHOD=byol SUITES=cifar10_subset scripts/standard_curves.sh     # another base method's curve at the same data
# Writes docs/figures/benchmarks/curves/SUITE_METHOD_curve.{json,png}; run folders under runs/METHOD_curve/.
# A finished suite (its JSON exists with the same epochs) is skipped, so re-running continues.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
EPOCHS="${EPOCHS:-24}"
METHOD="${METHOD:-simclr}"
for suite in ${SUITES:-digits_transfer cifar10_subset pacs}; do
  json=docs/figures/benchmarks/curves/${suite}_${METHOD}_curve.json
  if [ -f "$json" ] && "$PY" -c "import json,sys; sys.exit(json.load(open('$json'))['epochs'] != $EPOCHS)"; then
    echo "standard_curves: $suite done ($json)"; continue
  fi
  "$PY" -m tc2ssl.benchmarks.simclr_curve "$suite" --method "$METHOD" --epochs "$EPOCHS" --every 2 --headline-every 4 train.threads=1
done
