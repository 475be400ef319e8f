#!/usr/bin/env bash
# The four benchmark suites at the `paper` preset on one CUDA GPU, then the cross-suite summary, in one command:
#
#     scripts/gpu_benchmarks.sh            # or: SUITES="cifar10_subset" SEEDS=0,1,2,3,4 scripts/gpu_benchmarks.sh
#
# ResNet-18 (colored_mnist, digits_transfer, cifar10_subset at 28/32 px, CIFAR stem) and ResNet-50 (pacs at 224 px),
# bf16, batch 256; rows random_init, none, tasks, tc2 (+ the K ablation on CIFAR) for SimCLR and BYOL, the
# equal-compute baseline rows and the time-to-accuracy curves. Re-running the command resumes: finished runs are
# reused, an interrupted one continues from its last epoch checkpoint.
#
# EXPECTED RUN TIME — AN ESTIMATE, NOT MEASURED (no GPU was available when this was written). Assumed throughput
# (two augmented views, forward + backward, bf16, one H100/H200-class GPU): ResNet-18 at 28-32 px 8,000 images/s,
# ResNet-50 at 224 px 1,500 images/s. One "unit" = one SimCLR-baseline pretraining; per seed and method the rows
# cost about 9 units (none 1, tasks 1.5, tc2 2.5, their equal-compute baselines 1.5 + 2.5), the CIFAR K ablation
# another 9 for SimCLR. With the data of ../shared/data (MNIST: 14,262 train images; PACS: 7,137):
#   colored_mnist   14,262 x 50 epochs  = 0.71 M images/unit,  ~90 s/unit, 2 methods x 9 x 3 seeds  ~ 1.3 h
#   digits_transfer two pretrainings per run                                                            ~ 2.7 h
#   cifar10_subset  4,660 x 200 epochs  = 0.93 M images/unit, ~115 s/unit, (18 + 9) units x 3 seeds    ~ 2.6 h
#   pacs            7,137 x 100 epochs  = 0.71 M images/unit, ~480 s/unit, (9 + 9) units x 3 seeds     ~ 7 h
# about 14 hours in all; the evaluations (linear probes on CPU, scikit-learn) add minutes per run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
SUITES="${SUITES:-cifar10_subset colored_mnist digits_transfer pacs}"
METHODS="${METHODS:-byol}"
PLUGINS="${PLUGINS:-random_init,none,tasks,tc2}"
SEEDS="${SEEDS:-0,1,2}"
OUT="${OUT:-runs/paper}"

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: the paper preset needs a GPU')"
mkdir -p "$OUT"
folders=()
for suite in $SUITES; do
  echo "== $suite ($(date -u +%H:%M:%S) UTC)" | tee -a "$OUT/gpu_benchmarks.log"
  "$PY" -m tc2ssl benchmark --preset paper --plugins "$PLUGINS" --methods "$METHODS" --seeds "$SEEDS" "$suite" \
    "out=$OUT/$suite" 2>>"$OUT/gpu_benchmarks.log"
  folders+=("$OUT/$suite")
done
"$PY" -m tc2ssl.benchmarks.summary "${folders[@]}" --png "$OUT/overview.png" > "$OUT/summary.md"
echo "summary: $OUT/summary.md, $OUT/overview.png"
