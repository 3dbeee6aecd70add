"""Downstream tasks: finetuning and zero-shot evaluation."""
