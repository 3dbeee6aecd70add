#!/usr/bin/env bash
# The main job: tokenize the bundled Chinese news slice and pretrain a small GPT with
# tensor parallelism (TP=2) on CPU, with falling training and validation loss and a summary.
#
#     bash scripts/demo.sh                 # ~6 minutes on 2 CPU cores; gloo on CPU, nccl on GPU
#     DEMO_DIR=/tmp/demo bash scripts/demo.sh --train-iters 1200   # extra flags go to pretrain_gpt.py
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo_run}
VOCAB=tests/data/vocab/bert-base-chinese-vocab.txt
mkdir -p "$DEMO_DIR"

python tools/preprocess_data.py --input examples/data/zh_news_2000.jsonl.gz --output-prefix "$DEMO_DIR/zh" \
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB" --append-eod --log-interval 0

# A Llama-style GPT (RMSNorm, SwiGLU, rotary, untied output, no biases), character-level
# over the BERT Chinese vocabulary. One thread per process: the two tensor-parallel ranks
# share the machine's cores. The 21k-entry output layer is most of the compute, so the run
# buys learning with many small steps (8 x 64 tokens, about 2 epochs of the slice) at a
# high learning rate; validation every 50 steps on 80 held-out samples.
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} torchrun --nproc-per-node 2 pretrain_gpt.py \
    --tensor-model-parallel-size 2 \
    --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 64 \
    --normalization RMSNorm --swiglu --position-embedding-type rope \
    --untie-embeddings-and-output-weights --disable-bias-linear \
    --micro-batch-size 8 --global-batch-size 8 --train-iters 800 \
    --lr 5e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-fraction 0.05 \
    --adam-beta2 0.95 --weight-decay 0.1 --hidden-dropout 0 --attention-dropout 0 \
    --log-interval 50 --eval-interval 50 --eval-iters 10 --split 95,5,0 --num-workers 0 \
    --data-path "$DEMO_DIR/zh_text_document" --data-cache-path "$DEMO_DIR/index-cache" \
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB" "$@"
