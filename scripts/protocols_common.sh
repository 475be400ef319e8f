# The settings and helpers shared by scripts/protocols_gessl_umm.sh and scripts/protocols_pacs_resume.sh (sourced).
T=${TC2SSL:-.venv/bin/tc2ssl}
C="model.backbone=small_cnn_tiny train.batch_size=256 train.threads=1 train.progress=false eval.enabled=false train.resume=true"
POST="train.epochs=3 train.lr=5e-4 train.warmup_epochs=0 train.resume=true"
DIG="data.name=mnist data.resolution=28 data.max_train=2048 train.epochs=3"
PAC="data.name=pacs data.domains=[photo,sketch,cartoon] data.resolution=32 data.max_train=2048 train.epochs=3"
SEMI="eval.finetune_epochs=5 eval.random_init_baseline=false"
pretrain() { [ -f "$2/encoder.safetensors" ] || $T pretrain $C $1 seed=$3 out=$2; }
posthoc() { [ -f "$1/posthoc_$2/encoder.safetensors" ] || $T posthoc "$1" plugin.name=$2 $POST; }
evaluate() { [ -f "$1/$2" ] || $T evaluate --protocol $3 "$1" ${@:4}; }
