#!/usr/bin/env bash
# Wenzhong-GPT2-3.5B (IDEA-CCNL Fengshenbang): a GPT-2 of 30 layers, hidden 3072, 32 heads,
# 1024 positions, the GPT-2 BPE vocabulary (50257 ids, padded to 50304). Source: the HF
# config.json of IDEA-CCNL/Wenzhong-GPT2-3.5B (n_layer 30, n_embd 3072, n_head 32,
# n_positions 1024) and its fp16 pytorch_model.bin of 7.18 GB (= 3.59B parameters); the
# Fengshenbang README lists it at 3.5B.
# fp16, DeepSpeed ZeRO-2, full recomputation (one checkpoint per layer), 32 GPUs.
#
#     HOSTFILE=hostfiles/4x8 DATA_PATH=data/wudao_text_document VOCAB_FILE=vocab.json \
#         MERGE_FILE=merges.txt SAVE=ckpt/wenzhong bash scripts/pretrain_wenzhong_gpt2_3.5b.sh
#     bash scripts/pretrain_wenzhong_gpt2_3.5b.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${HOSTFILE:-hostfiles/4x8}
DATA_PATH=${DATA_PATH:-data/wudao_text_document}
VOCAB_FILE=${VOCAB_FILE:-vocab.json}
MERGE_FILE=${MERGE_FILE:-merges.txt}
VOCAB_SIZE=50257            # the tokenizer's size, for a dry run without the vocabulary files
source scripts/deepspeed_launch.sh

FLAGS=(
    --num-layers 30 --hidden-size 3072 --num-attention-heads 32
    --seq-length 1024 --max-position-embeddings 1024
    --micro-batch-size 8 --global-batch-size 512 --train-iters 150000
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style cosine --lr-warmup-fraction 0.01
    --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 0.01 --clip-grad 1.0
    --fp16
    --recompute-granularity full --recompute-method uniform --recompute-num-layers 1
    --tokenizer-type GPT2BPETokenizer --vocab-file "$VOCAB_FILE" --merge-file "$MERGE_FILE"
    --data-path "$DATA_PATH" --split 949,50,1
    --log-interval 100 --eval-interval 2000 --eval-iters 10
    --deepspeed --deepspeed_config scripts/ds_config_wenzhong_gpt2_3.5b.json
)
if [[ -n "${SAVE:-}" ]]; then FLAGS+=(--save "$SAVE" --save-interval 2000); fi
if [[ -n "${LOAD:-}" ]]; then FLAGS+=(--load "$LOAD"); fi
launch pretrain_gpt.py "${FLAGS[@]}" "$@"
