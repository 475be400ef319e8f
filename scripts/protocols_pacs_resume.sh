#!/usr/bin/env bash
# Finish docs/results.md §12.3 (GeSSL and UMM on PACS) after runs/ was cleared: re-make the seeds' pretrainings and
# UMM post-hoc runs (deterministic on the CPU with one thread), put the committed evaluations back beside them,
# check that one re-computed evaluation equals its committed file, then run phase 3 of protocols_gessl_umm.sh for
# the seeds given (SEEDS="0 1 2").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/protocols_common.sh
for seed in ${SEEDS:-1 2}; do
  P=runs/protocols/pacs/s$seed
  for p in none gessl; do pretrain "$PAC plugin.name=$p" $P/$p $seed; done
  posthoc $P/none umm
  # the committed evaluations back in place (protocol results record no encoder hash; determinism is checked below)
  for json in docs/figures/protocols/pacs/s$seed/{none,gessl,none/posthoc_umm}/eval_*.json; do
    [ -f "$json" ] || continue
    run=$(dirname "runs/protocols/pacs/s$seed/${json#docs/figures/protocols/pacs/s$seed/}")
    [ "$json" = "${CHECK:-docs/figures/protocols/pacs/s1/none/eval_pacs_semisup.json}" ] || cp -n "$json" "$run/"
  done
done
# determinism check: one committed evaluation is re-computed from the re-made encoder and must agree
CHECK=${CHECK:-docs/figures/protocols/pacs/s1/none/eval_pacs_semisup.json}
R=runs/protocols/pacs/${CHECK#docs/figures/protocols/pacs/}
[ -f "$R" ] || $T evaluate --protocol semisup "$(dirname "$R")" eval.finetune_epochs=5 eval.random_init_baseline=false
cmp <(python3 -m json.tool --sort-keys "$CHECK") <(python3 -m json.tool --sort-keys "$R") && echo "determinism check: $R equals the committed one"
PHASES=3 PHASE3_SEEDS="${SEEDS:-1 2}" bash scripts/protocols_gessl_umm.sh
