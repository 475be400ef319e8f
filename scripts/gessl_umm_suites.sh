#!/usr/bin/env bash
# Issues 13 and 14 on the four transfer suites at the cpu preset, 3 seeds: GeSSL (with the baseline at GeSSL's task
# batch; on colored_mnist also the baseline given GeSSL's training wall-clock) and UMM post hoc (beside the same extra epochs of plain
# SSL, its control), each paired with SimCLR of the same run. colored_mnist also records the time-to-accuracy curve
# (kNN every epoch). One thread per run (train.threads=1), so two suites can run side by side on 2 cores.
# Resumable: a finished (row, seed) run is reused. SUITES="pacs cifar10_subset" runs a subset.
# Outputs: runs/suites/<suite>_gessl_umm/results.{md,json} (colored_mnist: runs/controls/colored_mnist_gessl).
set -euo pipefail
cd "$(dirname "$0")/.."
B="${TC2SSL:-.venv/bin/tc2ssl} benchmark --preset cpu --seeds 0,1,2"
for suite in ${SUITES:-colored_mnist digits_transfer pacs cifar10_subset}; do
  case $suite in
    colored_mnist) $B --plugins none,gessl colored_mnist out=runs/controls/colored_mnist_gessl suite.curve_every=1 \
                     suite.equal_compute=1 train.threads=1 ;;
    cifar10_subset) $B --plugins none,gessl,umm cifar10_subset out=runs/suites/cifar10_subset_gessl_umm train.threads=1 ;;
    *) $B --plugins none,gessl,umm $suite out=runs/suites/${suite}_gessl_umm train.threads=1 ;;
  esac
done
