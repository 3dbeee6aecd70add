"""Zero-shot evaluation of a checkpoint, as Megatron-LM's tasks/zeroshot_gpt: perplexity of a
text stream (token- and word-level), LAMBADA last-word accuracy, and the pseudo-perplexity
of masked LMs. tools/evaluate.py is the command; evaluation.py the one call."""
from .evaluation import TASKS, ZeroShotOptions, evaluate_zeroshot

__all__ = ["TASKS", "ZeroShotOptions", "evaluate_zeroshot"]
