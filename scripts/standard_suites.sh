#!/usr/bin/env bash
# Issue 18: the suites at the `standard` preset (epochs fixed by scripts/standard_curves.sh), with the equal-compute
# rows and the time-to-accuracy curves the preset turns on. Resumable: finished runs are reused, an interrupted one
# continues from its last epoch checkpoint. SUITES="pacs" PLUGINS=... SEEDS=... select.
# Outputs: runs/standard/<suite>/results.{md,json}, copied to docs/figures/benchmarks/standard/<suite>/ when done.
set -euo pipefail
cd "$(dirname "$0")/.."
TC2SSL="${TC2SSL:-.venv/bin/tc2ssl}"
PLUGINS="${PLUGINS:-random_init,none,tasks,tc2}"
SEEDS="${SEEDS:-0,1,2}"
for suite in ${SUITES:-pacs digits_transfer cifar10_subset colored_mnist}; do
  "$TC2SSL" benchmark --preset standard --plugins "$PLUGINS" --seeds "$SEEDS" "$suite" out=runs/standard/$suite
  mkdir -p docs/figures/benchmarks/standard/$suite
  cp runs/standard/$suite/results.json runs/standard/$suite/results.md runs/standard/$suite/*.png \
     docs/figures/benchmarks/standard/$suite/
done
