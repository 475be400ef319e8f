#!/usr/bin/env bash
# Issue 15 measurements that follow the controls of scripts/controls_suites.sh, in priority order, cpu preset:
#   cm_calibrated   the calibrated preset's keys (incl. plugin.view_agreement=true) against SimCLR, 5 seeds
#   cm_clusters     the same with tasks that differ (plugin.task_split=pixel_clusters), 5 seeds
#   cm_fd           the default TC² with the finite-difference stage-2 hypergradient (against first order, §11.1)
#   dt_controls     digits_transfer with the controls, 3 seeds
#   pacs_controls   pacs with the controls, 5 seeds
#   cifar_controls  cifar10_subset with the controls, 3 seeds
# One thread per run, so two of these can run beside another job on 2 cores. Resumable (finished runs are reused).
# STEPS="cm_fd dt_controls" runs a subset. Outputs: runs/controls/<step>/results.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
B="${TC2SSL:-.venv/bin/tc2ssl} benchmark --preset cpu"
CALIBRATED="-p calibrated"                                   # configs/calibrated.yaml (with plugin.view_agreement)
CONTROLS=none,tc2,tc2_frozen,random_proj,tasks_nf
for step in ${STEPS:-cm_calibrated cm_clusters cm_fd dt_controls pacs_controls cifar_controls}; do
  case $step in
    cm_calibrated) $B --plugins none,tc2 --seeds 0,1,2,3,4 colored_mnist out=runs/controls/$step $CALIBRATED \
                     train.threads=1 ;;
    cm_clusters) $B --plugins none,tc2 --seeds 0,1,2,3,4 colored_mnist out=runs/controls/$step $CALIBRATED \
                   plugin.task_split=pixel_clusters train.threads=1 ;;
    cm_fd) $B --plugins none,tc2 --seeds 0,1,2,3,4 colored_mnist out=runs/controls/$step \
             plugin.stage2_mode=finite_difference train.threads=1 ;;
    dt_controls) $B --plugins $CONTROLS --seeds 0,1,2 digits_transfer out=runs/controls/$step train.threads=1 ;;
    pacs_controls) $B --plugins $CONTROLS --seeds 0,1,2,3,4 pacs out=runs/controls/$step train.threads=1 ;;
    cifar_controls) $B --plugins $CONTROLS --seeds 0,1,2 cifar10_subset out=runs/controls/$step train.threads=1 ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
