#!/usr/bin/env bash
# Chinese-Transformer-XL 2.9B (THUDM / BAAI "Wenhui"): a GPT-3 2.7B shape (32 layers, hidden
# 2560, 32 heads) with Transformer-XL relative attention over 512-token segments and a memory
# of 256 positions; fp16, DeepSpeed ZeRO-2 on 8 nodes x 8 GPUs. Source: THUDM/Chinese-Transformer-XL
# scripts/ds_pretrain_gpt_2.9B.sh (--num-layers 32 --hidden-size 2560 --num-attention-heads 32
# --seq-length 512 --mem-length 256 --fp16, lr 1e-4 cosine to 0.1x over 300000 iterations, 1%
# warmup, split 949,50,1) and scripts/ds_config_2.9B.json (ZeRO-2, Adam betas 0.9/0.95, weight
# decay 0.01, clipping 1.0); README: "29亿" (2.9B) parameters. Its ChineseSPTokenizer is the
# 50000-piece cog-pretrain.model plus <|endoftext|>: 50001 ids, padded to 50048.
#
# The seed ran micro-batches of 16 with activation checkpointing; our Transformer-XL does not
# recompute yet, so micro-batches of 4 with 4 accumulation steps keep its global batch of 1024.
#
#     HOSTFILE=hostfiles/8x8 DATA_PATH=data/wudao_text_document TOKENIZER_MODEL=cog-pretrain.model \
#         SAVE=ckpt/txl bash scripts/pretrain_chinese_transformer_xl_2.9b.sh
#     bash scripts/pretrain_chinese_transformer_xl_2.9b.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${HOSTFILE:-hostfiles/8x8}
DATA_PATH=${DATA_PATH:-data/wudao_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-cog-pretrain.model}
VOCAB_SIZE=50004            # 50000 pieces + <CLS> <SEP> <EOD> <MASK>, for a dry run without the file (padded 50048)
source scripts/deepspeed_launch.sh

FLAGS=(
    --num-layers 32 --hidden-size 2560 --num-attention-heads 32
    --seq-length 512 --mem-length 256
    --micro-batch-size 4 --global-batch-size 1024 --train-iters 300000
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine --lr-decay-iters 300000 --lr-warmup-fraction 0.01
    --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 0.01 --clip-grad 1.0
    --fp16 --loss-scale-window 1000 --hysteresis 2 --min-loss-scale 1
    --tokenizer-type SentencePieceTokenizer --tokenizer-model "$TOKENIZER_MODEL"
    --data-path "$DATA_PATH" --split 949,50,1
    --log-interval 100 --eval-interval 2000 --eval-iters 10
    --deepspeed --deepspeed_config scripts/ds_config_chinese_transformer_xl_2.9b.json
)
if [[ -n "${SAVE:-}" ]]; then FLAGS+=(--save "$SAVE" --save-interval 2000); fi
if [[ -n "${LOAD:-}" ]]; then FLAGS+=(--load "$LOAD"); fi
launch pretrain_transformer_xl.py "${FLAGS[@]}" "$@"
