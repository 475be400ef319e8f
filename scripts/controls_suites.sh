#!/usr/bin/env bash
# Issue 15/13 measurements on the cpu preset: TC²'s controls (frozen calibrator, random projection, +T on the
# top-n_f subspace), UMM post hoc with its plain-SSL control, GeSSL with its time-to-accuracy curve, the stage-2 hypergradient (first order = the default,
# against finite difference) and tasks that differ (plugin.task_split=pixel_clusters).
# Resumable: a finished (row, seed) run is reused, so re-running this script continues where it stopped.
# Outputs: runs/controls/<suite>[_variant]/results.{md,json}; copied to docs/figures/benchmarks/controls/.
set -euo pipefail
cd "$(dirname "$0")/.."
B="${TC2SSL:-.venv/bin/tc2ssl} benchmark --preset cpu"
CONTROLS=none,tc2,tc2_frozen,random_proj,tasks_nf
$B --plugins $CONTROLS --seeds 0,1,2,3,4 colored_mnist out=runs/controls/colored_mnist
$B --plugins $CONTROLS,umm --seeds 0,1,2,3,4 colored_mnist out=runs/controls/colored_mnist    # + UMM post hoc
$B --plugins tc2 --seeds 0,1,2,3,4 colored_mnist out=runs/controls/colored_mnist_fd plugin.stage2_mode=finite_difference
$B --plugins none,gessl --seeds 0,1,2 colored_mnist out=runs/controls/colored_mnist_gessl suite.curve_every=1
$B --plugins tc2 --seeds 0,1,2,3,4 colored_mnist out=runs/controls/colored_mnist_clusters plugin.task_split=pixel_clusters
$B --plugins $CONTROLS --seeds 0,1,2,3,4 pacs out=runs/controls/pacs
$B --plugins $CONTROLS --seeds 0,1,2 digits_transfer out=runs/controls/digits_transfer
$B --plugins none,gessl --seeds 0,1,2 digits_transfer out=runs/controls/digits_transfer_gessl
$B --plugins none,gessl --seeds 0,1,2 pacs out=runs/controls/pacs_gessl
