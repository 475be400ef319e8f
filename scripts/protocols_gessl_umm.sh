#!/usr/bin/env bash
# docs/results.md §12 extended (issue 17): the same tiny pretrainings as §12 (small_cnn_tiny, 2,048 images, 3 epochs
# of batch 256). Phase 1: MNIST -> USPS for GeSSL and UMM (SimCLR re-run as the paired base; UMM post hoc on the
# SimCLR run for 3 epochs at lr 5e-4, beside the same 3 extra plain SimCLR epochs, its control). Phase 2: PACS
# semi-supervised and fine-tuning for SimCLR, +T and TC². Phase 3: the same for GeSSL and UMM, and PACS few-shot
# for SimCLR, GeSSL, UMM and UMM's control (3 more plain SimCLR epochs) (PHASE3_SEEDS="0" bash ... runs one seed of it, so seeds can run side by side).
# Resumable: a step whose output exists is skipped (copy docs/figures/protocols/ into runs/protocols/ first to
# skip evaluations whose results are committed). Outputs under runs/protocols/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/protocols_common.sh
phase() { [[ " ${PHASES:-1 2 3} " == *" $1 "* ]] && echo "$2" || true; }   # PHASES="3" runs phase 3 only
for seed in $(phase 1 "0 1 2"); do                               # phase 1: MNIST -> USPS, GeSSL and UMM
  D=runs/protocols/digits/s$seed
  for p in none gessl; do pretrain "$DIG plugin.name=$p" $D/$p $seed; done
  for post in umm none; do posthoc $D/none $post; done
  for run in $D/none $D/gessl $D/none/posthoc_umm $D/none/posthoc_none; do
    evaluate $run eval_usps_fewshot.json fewshot eval.data=usps eval.random_init_baseline=false
  done
  for run in $D/none $D/gessl $D/none/posthoc_umm; do
    evaluate $run eval_usps_semisup.json semisup eval.data=usps $SEMI
    evaluate $run eval_usps_finetune.json finetune eval.data=usps $SEMI
  done
done
for seed in $(phase 2 "0 1 2"); do                               # phase 2: PACS, SimCLR / +T / TC²
  P=runs/protocols/pacs/s$seed
  for p in none tasks tc2; do
    pretrain "$PAC plugin.name=$p" $P/$p $seed
    evaluate $P/$p eval_pacs_semisup.json semisup $SEMI
    evaluate $P/$p eval_pacs_finetune.json finetune $SEMI
  done
done
for seed in $(phase 3 "${PHASE3_SEEDS:-0 1 2}"); do               # phase 3: PACS, GeSSL / UMM, and few-shot
  P=runs/protocols/pacs/s$seed
  pretrain "$PAC plugin.name=none" $P/none $seed                 # (phase 2's run; re-made if runs/ was cleared)
  pretrain "$PAC plugin.name=gessl" $P/gessl $seed
  posthoc $P/none umm
  for run in $P/gessl $P/none/posthoc_umm; do
    evaluate $run eval_pacs_semisup.json semisup $SEMI
    evaluate $run eval_pacs_finetune.json finetune $SEMI
  done
  posthoc $P/none none                                           # UMM's control: the same 3 plain SimCLR epochs
  for run in $P/none $P/gessl $P/none/posthoc_umm $P/none/posthoc_none; do   # (SimCLR/+T/TC²: §12's runs)
    evaluate $run eval_pacs_fewshot.json fewshot eval.random_init_baseline=false
  done
done
echo all done
