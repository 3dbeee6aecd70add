#!/usr/bin/env bash
# Zhouwenwang-Unified-1.3B (IDEA-CCNL Fengshenbang with Zhuiyi): a pre-LN RoFormer (rotary
# positions on adjacent channel pairs) of 24 layers, hidden 2048, 32 heads, MLP 8192, 512
# positions, 2 token types, trained on masked LM and left-to-right LM at once, over the
# 12000-token character vocabulary of Zhuiyi's RoFormer (the model card's vocab.txt, 53.5 kB).
# Source: the HF model card of IDEA-CCNL/Zhouwenwang-Unified-1.3B ("13亿参数", model_type
# megatron-bert) and Fengshenbang-LM fengshen/models/roformer; the layer shape is the
# Erlangshen-1.3B one. Check num_hidden_layers / vocab_size against that config.json before a run:
# its text (431 bytes, HF tree 974ce39) is in no reference corpus this project could search
# (HF pages list the file only; Fengshenbang-LM's sources name the 110M model alone).
# fp16 with DeepSpeed ZeRO-1, selective recomputation, 32 GPUs.
#
#     HOSTFILE=hostfiles/4x8 DATA_PATH=data/wudao_text_sentence VOCAB_FILE=vocab.txt \
#         SAVE=ckpt/zhouwenwang bash scripts/pretrain_zhouwenwang_roformer_1.3b.sh
#     bash scripts/pretrain_zhouwenwang_roformer_1.3b.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${HOSTFILE:-hostfiles/4x8}
DATA_PATH=${DATA_PATH:-data/wudao_text_sentence}
VOCAB_FILE=${VOCAB_FILE:-vocab.txt}
VOCAB_SIZE=12002            # 12000 entries + [BOS] [EOS], for a dry run without the file (padded 12032)
source scripts/deepspeed_launch.sh

FLAGS=(
    --num-layers 24 --hidden-size 2048 --num-attention-heads 32 --ffn-hidden-size 8192
    --seq-length 512 --max-position-embeddings 512 --layernorm-position pre
    --micro-batch-size 8 --global-batch-size 1024 --train-iters 200000
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style linear --lr-warmup-fraction 0.01
    --adam-beta1 0.9 --adam-beta2 0.999 --adam-eps 1e-8 --weight-decay 0.01 --clip-grad 1.0
    --fp16 --recompute-activations
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB_FILE"
    --data-path "$DATA_PATH" --split 949,50,1
    --log-interval 100 --eval-interval 2000 --eval-iters 10
    --deepspeed --deepspeed_config scripts/ds_config_zhouwenwang_roformer_1.3b.json
)
if [[ -n "${SAVE:-}" ]]; then FLAGS+=(--save "$SAVE" --save-interval 2000); fi
if [[ -n "${LOAD:-}" ]]; then FLAGS+=(--load "$LOAD"); fi
launch pretrain_roformer.py "${FLAGS[@]}" "$@"
