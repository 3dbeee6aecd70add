#!/usr/bin/env bash
# The main job: tokenize the bundled Chinese news slice, pretrain a small GPT with tensor
# parallelism (TP=2) through DeepSpeed's launcher, stop and save at iteration 700, resume from
# that checkpoint for the last 100 iterations, and print text generated from the checkpoint.
#
#     bash scripts/demo.sh                 # ~8 minutes on 2 CPU cores; gloo on CPU, nccl on GPU
#     DEMO_DIR=/tmp/demo bash scripts/demo.sh --lr 3e-3   # extra flags go to pretrain_gpt.py
#     LAUNCHER=torchrun bash scripts/demo.sh              # torchrun instead of deepspeed
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo_run}
VOCAB=tests/data/vocab/bert-base-chinese-vocab.txt
CHECKPOINTS="$DEMO_DIR/checkpoints"
mkdir -p "$DEMO_DIR"
rm -rf "$CHECKPOINTS"

python tools/preprocess_data.py --input examples/data/zh_news_2000.jsonl.gz --output-prefix "$DEMO_DIR/zh" \
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB" --append-eod --log-interval 0

# One thread per process: the two tensor-parallel ranks share the machine's cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
launch() {
    if [ "${LAUNCHER:-deepspeed}" = torchrun ]; then
        torchrun --nproc-per-node 2 pretrain_gpt.py "$@"
    else
        # hostfiles/localhost is "localhost slots=2"; on a machine without GPUs DeepSpeed's
        # launcher needs --no_ssh and the local address instead of ssh to itself.
        deepspeed --hostfile hostfiles/localhost --no_ssh --node_rank 0 --master_addr 127.0.0.1 \
            pretrain_gpt.py "$@"
    fi
}

# A Llama-style GPT (RMSNorm, SwiGLU, rotary, untied output, no biases), character-level
# over the BERT Chinese vocabulary. The 21k-entry output layer is most of the compute, so
# the run buys learning with many small steps (8 x 64 tokens, about 2 epochs of the slice)
# at a high learning rate; validation every 50 steps on 80 held-out samples.
FLAGS=(
    --tensor-model-parallel-size 2
    --num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 64
    --normalization RMSNorm --swiglu --position-embedding-type rope
    --untie-embeddings-and-output-weights --disable-bias-linear
    --micro-batch-size 8 --global-batch-size 8 --train-iters 800
    --lr 5e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-fraction 0.05
    --adam-beta2 0.95 --weight-decay 0.1 --hidden-dropout 0 --attention-dropout 0
    --log-interval 50 --eval-interval 50 --eval-iters 10 --split 95,5,0 --num-workers 0
    --data-path "$DEMO_DIR/zh_text_document" --data-cache-path "$DEMO_DIR/index-cache"
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB"
    --save "$CHECKPOINTS" --save-interval 700
)

echo "== pretraining to iteration 700, then saving and exiting (--exit-interval 700)"
launch "${FLAGS[@]}" --exit-interval 700 "$@"
echo "== resuming from $CHECKPOINTS for iterations 701-800"
launch "${FLAGS[@]}" --load "$CHECKPOINTS" "$@"

echo "== text generated from the checkpoint of iteration 800 (top-k sampling, seed 1234)"
python tools/generate_text.py --load "$CHECKPOINTS" --prompt "中国经济" --out-seq-length 48 \
    --top-k 5 --temperature 0.8 --seed 1234
echo
