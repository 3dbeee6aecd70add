#!/usr/bin/env bash
# Erlangshen-MegatronBert-1.3B (IDEA-CCNL Fengshenbang): a pre-LN MegatronBERT of 24 layers,
# hidden 2048, 32 heads, MLP 8192, 512 positions, 2 token types, the 21128-token BERT Chinese
# vocabulary padded to 21248; whole-word masking and sentence-order prediction; trained "on 32
# A100s for 14 days" (hostfiles/4x8). Source: the HF model card and config.json of
# IDEA-CCNL/Erlangshen-MegatronBert-1.3B (model_type megatron-bert, vocab_size 21248); the
# 48-layer, hidden-2560 shape is the 3.9B sibling (Erlangshen-MegatronBert-3.9B-Chinese).
# fp16 with DeepSpeed ZeRO-1, selective recomputation.
#
#     HOSTFILE=hostfiles/4x8 DATA_PATH=data/wudao_text_sentence VOCAB_FILE=vocab.txt \
#         SAVE=ckpt/erlangshen bash scripts/pretrain_erlangshen_megatron_bert_1.3b.sh
#     bash scripts/pretrain_erlangshen_megatron_bert_1.3b.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${HOSTFILE:-hostfiles/4x8}
DATA_PATH=${DATA_PATH:-data/wudao_text_sentence}
VOCAB_FILE=${VOCAB_FILE:-vocab.txt}
VOCAB_SIZE=21130            # 21128 entries + [BOS] [EOS], for a dry run without the file (padded 21248)
source scripts/deepspeed_launch.sh

FLAGS=(
    --num-layers 24 --hidden-size 2048 --num-attention-heads 32 --ffn-hidden-size 8192
    --seq-length 512 --max-position-embeddings 512 --layernorm-position pre
    --micro-batch-size 8 --global-batch-size 1024 --train-iters 200000
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style linear --lr-warmup-fraction 0.01
    --adam-beta1 0.9 --adam-beta2 0.999 --adam-eps 1e-8 --weight-decay 0.01 --clip-grad 1.0
    --fp16 --recompute-activations
    --sop --wwm
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB_FILE"
    --data-path "$DATA_PATH" --split 949,50,1
    --log-interval 100 --eval-interval 2000 --eval-iters 10
    --deepspeed --deepspeed_config scripts/ds_config_erlangshen_megatron_bert_1.3b.json
)
if [[ -n "${SAVE:-}" ]]; then FLAGS+=(--save "$SAVE" --save-interval 2000); fi
if [[ -n "${LOAD:-}" ]]; then FLAGS+=(--load "$LOAD"); fi
launch pretrain_bert.py "${FLAGS[@]}" "$@"
