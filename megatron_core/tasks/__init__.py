"""Downstream tasks: finetuning and zero-shot evaluation.

Classification and multiple choice (finetune_classification.py): CLUE's and FewCLUE's task
files read into examples (`clue.py`, `multiple_choice.py`, `jsonl_task.py`), encoded into
BERT inputs (`encoding.py`), the run (`classification_run.py`: task options, forward step,
`pretrained.py`: the encoder to start from, `classification_eval.py`: whole-set accuracy and
macro F1, the best checkpoint, predictions in CLUE's submission format, `predictions.py`), and
a small learnable task built from the bundled corpus (`learnable_task.py`).
Generation tasks: a T5's answers to source/target lines (`t5_predictions.py`) and their exact
match and character-level ROUGE-L (`generation_metrics.py`).
Zero-shot evaluation (tools/evaluate.py): `zeroshot/`."""
