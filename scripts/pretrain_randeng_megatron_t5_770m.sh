#!/usr/bin/env bash
# Randeng-MegatronT5-770M (IDEA-CCNL Fengshenbang): a Megatron-LM T5 ("Chinese T5-large") of
# 24 encoder + 24 decoder layers, hidden 1024, 16 heads, MLP 4096, learned positions (512),
# tied output, the 21128-token BERT Chinese vocabulary with Megatron's 100 sentinel ids
# (padded to 21248); "16 A100s for about 14 days" (hostfiles/2x8). Source: the HF model
# card of IDEA-CCNL/Randeng-MegatronT5-770M and its fp16 pytorch_model.bin of 1.46 GB (= 0.73B
# parameters; "770M" is Google's T5-large count with a 32k vocabulary). The mT5-style
# Randeng-T5-784M (gated GELU, relative buckets, RMSNorm) needs flags pretrain_t5.py lacks.
# Encoder 512 / decoder 128 tokens (Megatron's T5 defaults), fp16, selective recomputation,
# DeepSpeed ZeRO-1.
#
#     HOSTFILE=hostfiles/2x8 DATA_PATH=data/wudao_text_sentence VOCAB_FILE=vocab.txt \
#         SAVE=ckpt/randeng bash scripts/pretrain_randeng_megatron_t5_770m.sh
#     bash scripts/pretrain_randeng_megatron_t5_770m.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${HOSTFILE:-hostfiles/2x8}
DATA_PATH=${DATA_PATH:-data/wudao_text_sentence}
VOCAB_FILE=${VOCAB_FILE:-vocab.txt}
VOCAB_SIZE=21230            # 21128 + [BOS] [EOS] + 100 sentinels, for a dry run without the file (padded 21248)
source scripts/deepspeed_launch.sh

FLAGS=(
    --encoder-num-layers 24 --decoder-num-layers 24 --hidden-size 1024 --num-attention-heads 16
    --ffn-hidden-size 4096 --max-position-embeddings 512
    --encoder-seq-length 512 --decoder-seq-length 128
    --micro-batch-size 16 --global-batch-size 1024 --train-iters 200000
    --lr 1e-4 --min-lr 1e-5 --lr-decay-style linear --lr-warmup-fraction 0.01
    --adam-beta1 0.9 --adam-beta2 0.999 --adam-eps 1e-8 --weight-decay 0.01 --clip-grad 1.0
    --fp16 --recompute-activations
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB_FILE" --vocab-extra-ids 100
    --data-path "$DATA_PATH" --split 949,50,1
    --log-interval 100 --eval-interval 2000 --eval-iters 10
    --deepspeed --deepspeed_config scripts/ds_config_randeng_megatron_t5_770m.json
)
if [[ -n "${SAVE:-}" ]]; then FLAGS+=(--save "$SAVE" --save-interval 2000); fi
if [[ -n "${LOAD:-}" ]]; then FLAGS+=(--load "$LOAD"); fi
launch pretrain_t5.py "${FLAGS[@]}" "$@"
