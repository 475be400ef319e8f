#!/usr/bin/env bash
# docs/results.md §12 extended to GeSSL and UMM (issue 17): the same tiny pretrainings as §12 (small_cnn_tiny,
# 2,048 images, 3 epochs of batch 256), SimCLR re-run as the paired base, GeSSL pretrained the same way, UMM post hoc
# on the SimCLR run (3 epochs, lr 5e-4) beside the same 3 extra plain SimCLR epochs (UMM's control).
# Resumable: a step whose output exists is skipped. Outputs under runs/protocols/.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TC2SSL:-.venv/bin/tc2ssl}
C="model.backbone=small_cnn_tiny train.batch_size=256 train.threads=1 train.progress=false eval.enabled=false train.resume=true"
POST="train.epochs=3 train.lr=5e-4 train.warmup_epochs=0 train.resume=true"
pretrain() { [ -f "$2/encoder.safetensors" ] || $T pretrain $C $1 seed=$3 out=$2; }
posthoc() { [ -f "$1/posthoc_$2/encoder.safetensors" ] || $T posthoc "$1" plugin.name=$2 $POST; }
evaluate() { [ -f "$1/$2" ] || $T evaluate --protocol $3 "$1" ${@:4}; }
for seed in 0 1 2; do
  D=runs/protocols/digits/s$seed; P=runs/protocols/pacs/s$seed
  DIG="data.name=mnist data.resolution=28 data.max_train=2048 train.epochs=3"
  PAC="data.name=pacs data.domains=[photo,sketch,cartoon] data.resolution=32 data.max_train=2048 train.epochs=3"
  for p in none gessl; do
    pretrain "$DIG plugin.name=$p" $D/$p $seed
    pretrain "$PAC plugin.name=$p" $P/$p $seed
  done
  for post in umm none; do posthoc $D/none $post; posthoc $P/none $post; done
  for run in $D/none $D/gessl $D/none/posthoc_umm $D/none/posthoc_none; do
    evaluate $run eval_usps_fewshot.json fewshot eval.data=usps eval.random_init_baseline=false
  done
  for run in $D/none $D/gessl $D/none/posthoc_umm; do      # (UMM's control: few-shot only, for machine time)
    evaluate $run eval_usps_semisup.json semisup eval.data=usps eval.finetune_epochs=5 eval.random_init_baseline=false
    evaluate $run eval_usps_finetune.json finetune eval.data=usps eval.finetune_epochs=5 eval.random_init_baseline=false
  done
  for run in $P/none $P/gessl $P/none/posthoc_umm $P/none/posthoc_none; do
    evaluate $run eval_pacs_fewshot.json fewshot eval.random_init_baseline=false
  done
done
echo all done
