#!/usr/bin/env bash
# Pretrain a small BERT on the bundled Chinese news slice, finetune it on a task made from the
# same slice (is a sentence as written, or its characters shuffled?), print the dev accuracy
# after each epoch and the first predictions.
#
#     bash scripts/demo_finetune.sh                 # a few minutes on 2 CPU cores
#     DEMO_DIR=/tmp/ft bash scripts/demo_finetune.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo_finetune_run}
VOCAB=tests/data/vocab/bert-base-chinese-vocab.txt
mkdir -p "$DEMO_DIR"
rm -rf "$DEMO_DIR/bert" "$DEMO_DIR/classifier"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

python tools/preprocess_data.py --input examples/data/zh_news_2000.jsonl.gz --output-prefix "$DEMO_DIR/zh" \
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB" --split-sentences --log-interval 0

MODEL=(--num-layers 2 --hidden-size 128 --num-attention-heads 4 --max-position-embeddings 64
       --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB")

echo "== pretraining a small BERT (masked LM + sentence order) for 200 iterations"
python pretrain_bert.py "${MODEL[@]}" --seq-length 64 --micro-batch-size 32 --global-batch-size 32 \
    --train-iters 200 --lr 2e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-fraction 0.05 \
    --log-interval 50 --eval-iters 0 --split 100,0,0 --num-workers 0 \
    --data-path "$DEMO_DIR/zh_text_sentence" --data-cache-path "$DEMO_DIR/index-cache" \
    --save "$DEMO_DIR/bert" --save-interval 200

echo "== the task: 2000 training and 400 dev sentences, half of them with their characters shuffled"
python -m megatron_core.tasks.learnable_task --output "$DEMO_DIR/task" --train 2000 --dev 400

echo "== finetuning the pretrained encoder for 3 epochs (accuracy of the majority class: 0.5)"
python finetune_classification.py "${MODEL[@]}" --task jsonl --text-key text --label-key label \
    --train-data "$DEMO_DIR/task/train.jsonl" --valid-data "$DEMO_DIR/task/dev.jsonl" \
    --pretrained-checkpoint "$DEMO_DIR/bert" --epochs 3 --seq-length 64 \
    --micro-batch-size 32 --global-batch-size 32 --lr 1e-3 --lr-warmup-fraction 0.1 \
    --log-interval 20 --eval-interval 1000 --save "$DEMO_DIR/classifier" --predict

echo "== the first predictions ($DEMO_DIR/classifier/jsonl_predict.json; CLUE's format)"
head -n 5 "$DEMO_DIR/classifier/jsonl_predict.json"
