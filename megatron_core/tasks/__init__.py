"""Downstream finetuning data: CLUE's and FewCLUE's task files read into examples
(`clue.py`, `multiple_choice.py`, `jsonl_task.py`), examples encoded into BERT inputs
(`encoding.py`), predictions written in CLUE's submission format (`predictions.py`), and
a small learnable task built from the bundled corpus for tests (`learnable_task.py`).
Generation tasks: a T5's answers to source/target lines (`t5_predictions.py`) and their
exact match and character-level ROUGE-L (`generation_metrics.py`)."""
