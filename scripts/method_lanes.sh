#!/usr/bin/env bash
# Issue 18: another base method's rows (random_init, none, tasks, tc2 and their equal-compute comparators) of a
# `standard` suite on a 2-core machine, as two one-thread lanes that never train the same run folder:
#   lane A: random_init, none, tasks (and none@tasks);
#   lane B: tc2 first (no equal-compute rows yet), then, once lane A's none run has finished, none@tc2.
# Per seed, in seed order; everything is resumable (re-run the same command: finished runs are reused, an
# unfinished one continues from its checkpoint).
#   scripts/method_lanes.sh A pacs runs/standard_byol/pacs "0 1 2" method.name=byol &
#   scripts/method_lanes.sh B pacs runs/standard_byol/pacs "0 1 2" method.name=byol &
# Then one table without re-training (reuses every run; random_init left out: the SimCLR folder has it) and the
# merge beside the SimCLR rows (`tc2ssl merge`, docs/results.md §9.15):
#   tc2ssl benchmark --preset standard --plugins none,tasks,tc2 --seeds 0,1,2 pacs \
#       out=runs/standard_byol/pacs train.threads=1 method.name=byol
# Later seeds in another folder get the first seeds' equal-compute epochs by starting from a copy of its
# equal_compute.json (the step timing is stored there and reused).
set -u
lane=$1; suite=$2; out=$3; seeds=$4; shift 4
cd "$(dirname "$0")/.."
T="${TC2SSL:-.venv/bin/tc2ssl}"
for S in $seeds; do
  if [ "$lane" = A ]; then
    $T benchmark --preset standard --plugins random_init,none,tasks --seeds "$S" "$suite" out="$out" \
      train.threads=1 "$@" || exit 1
  else
    $T benchmark --preset standard --plugins tc2 --seeds "$S" "$suite" out="$out" train.threads=1 \
      suite.equal_compute=0 "$@" || exit 1
    while [ ! -f "$out/none_seed$S/benchmark.json" ]; do sleep 20; done
    $T benchmark --preset standard --plugins random_init,none,tc2 --seeds "$S" "$suite" out="$out" \
      train.threads=1 "$@" || exit 1
  fi
  echo "method_lanes: lane $lane, seed $S done $(date)"
done
