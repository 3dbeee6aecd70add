#!/usr/bin/env bash
# A Llama-style 7B: 32 layers, hidden 4096, 32 heads, SwiGLU MLP 11008, RMSNorm (eps 1e-6),
# rotary positions, untied output, no biases, sequence length 4096, 32000-piece SentencePiece
# vocabulary: 6.74B parameters. Shape of LLaMA-7B / Llama-2-7b (Touvron et al. 2023; the HF
# config.json of meta-llama/Llama-2-7b-hf: hidden_size 4096, intermediate_size 11008,
# num_hidden_layers 32, num_attention_heads 32, vocab_size 32000, max_position_embeddings 4096).
#
# 32 GPUs (hostfiles/4x8): TP=2 with sequence parallelism inside a node, DP=16, bf16,
# selective recomputation, DeepSpeed ZeRO-1 (TP and sequence parallelism take ZeRO 0/1).
#
#     HOSTFILE=hostfiles/4x8 DATA_PATH=data/corpus_text_document TOKENIZER_MODEL=tokenizer.model \
#         SAVE=ckpt/llama7b bash scripts/pretrain_llama_7b.sh
#     bash scripts/pretrain_llama_7b.sh --dry-run      # validate + parameter count + memory per rank
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTFILE=${HOSTFILE:-hostfiles/4x8}
DATA_PATH=${DATA_PATH:-data/corpus_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-tokenizer.model}
VOCAB_SIZE=32000            # the tokenizer's ids (its pieces, nothing added), for a dry run without the file
source scripts/deepspeed_launch.sh

FLAGS=(
    --tensor-model-parallel-size 2 --sequence-parallel
    --num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008
    --seq-length 4096 --max-position-embeddings 4096
    --normalization RMSNorm --norm-epsilon 1e-6 --swiglu --position-embedding-type rope
    --untie-embeddings-and-output-weights --disable-bias-linear
    --attention-dropout 0 --hidden-dropout 0
    --micro-batch-size 1 --global-batch-size 1024 --train-iters 250000
    --lr 3e-4 --min-lr 3e-5 --lr-decay-style cosine --lr-warmup-iters 2000
    --adam-beta1 0.9 --adam-beta2 0.95 --adam-eps 1e-8 --weight-decay 0.1 --clip-grad 1.0
    --bf16 --recompute-activations
    --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model "$TOKENIZER_MODEL"
    --data-path "$DATA_PATH" --split 949,50,1
    --log-interval 10 --eval-interval 1000 --eval-iters 10
    --deepspeed --deepspeed_config scripts/ds_config_llama_7b.json
)
if [[ -n "${SAVE:-}" ]]; then FLAGS+=(--save "$SAVE" --save-interval 1000); fi
if [[ -n "${LOAD:-}" ]]; then FLAGS+=(--load "$LOAD"); fi
launch pretrain_gpt.py "${FLAGS[@]}" "$@"
