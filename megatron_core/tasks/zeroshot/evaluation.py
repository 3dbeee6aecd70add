"""One zero-shot evaluation of a loaded checkpoint: read the file, tokenize, score, sum up.

    options = ZeroShotOptions(task="ppl", valid_data="wiki.txt", seq_length=1024, overlapping_eval=32)
    metrics = evaluate_zeroshot(loaded, tokenizer, options)    # on every rank; the same dict

  ppl       the text as one token stream (inputs.joined_text), in windows of seq_length
            (windows.py); GPT / Llama-style windows are independent (with --overlapping-eval
            N they advance by N tokens), a Transformer-XL reads them in order with memory
            (causal_lm.py). Token-level and word-level ("adjusted") perplexity (metrics.py).
  lambada   last-word accuracy of every JSON line, strict and last-token (inputs.py).
  mlm-ppl   BERT / MegatronBERT / RoFormer pseudo-perplexity (masked_lm.py).
  chid      FewCLUE's CHID by masked-LM scoring of each candidate idiom in the blank (cloze.py):
            accuracy and the chosen candidate of every line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from ...errors import ConfigError, DataError
from ...inference.checkpoint_model import LoadedModel
from ...models.registry import get_family
from ..multiple_choice import chid_items
from .causal_lm import lambada_correct, stream_log_likelihood
from .cloze import cloze_metrics, cloze_predictions
from .inputs import Texts, count_words, joined_text, lambada_samples, read_texts
from .masked_lm import pseudo_log_likelihood
from .metrics import accuracy_metrics, perplexity_metrics
from .progress import Progress
from .windows import lm_windows

TASKS = ("ppl", "lambada", "mlm-ppl", "chid")


@dataclass(frozen=True)
class ZeroShotOptions:
    task: str
    valid_data: str
    text_key: str = "text"
    seq_length: Optional[int] = None        # None: the checkpoint's --seq-length
    overlapping_eval: Optional[int] = None  # ppl of a GPT: windows advance by this many tokens (None: seq_length)
    micro_batch_size: int = 8
    mem_length: Optional[int] = None        # Transformer-XL: the memory carried between windows (None: the model's)
    word_count: str = "auto"                # inputs.WORD_COUNTS
    log_interval: int = 10                  # a progress line every this many batches


def _check_task(loaded: LoadedModel, options: ZeroShotOptions) -> str:
    """The family's generation adapter, checked against the task."""
    spec = get_family(loaded.family)
    if options.task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, got {options.task!r}.")
    if options.task in ("mlm-ppl", "chid"):
        if not spec.fill_mask:
            raise ConfigError(f"--task {options.task} needs a BERT, MegatronBERT or RoFormer checkpoint; {loaded.path} "
                              f"holds a {loaded.family} model" + (": use --task ppl." if options.task == "mlm-ppl"
                                                                 else "."))
        return "masked_lm"
    if spec.generation not in ("causal_lm", "transformer_xl"):
        hint = "use --task mlm-ppl" if spec.fill_mask else "evaluate a GPT, Llama-style or Transformer-XL checkpoint"
        raise ConfigError(f"--task {options.task} needs a GPT, Llama-style or Transformer-XL checkpoint; "
                          f"{loaded.path} holds a {loaded.family} model: {hint}.")
    if options.overlapping_eval is not None and spec.generation == "transformer_xl":
        raise ConfigError("--overlapping-eval is for GPT models; a Transformer-XL carries its memory across the "
                          "windows instead (set its size with --mem-length).")
    if options.mem_length is not None and spec.generation != "transformer_xl":
        raise ConfigError(f"--mem-length is for Transformer-XL; {loaded.path} holds a {loaded.family} model.")
    return spec.generation


def _seq_length(loaded: LoadedModel, options: ZeroShotOptions) -> int:
    seq_length = options.seq_length or loaded.args.get("seq_length") or loaded.args.get("max_position_embeddings")
    if not seq_length:
        raise ConfigError(f"{loaded.path} stores no --seq-length; give --seq-length.")
    limit = getattr(loaded.model, "max_sequence_length", None) \
        if loaded.config.position_embedding_type == "learned_absolute" else None
    if limit is not None and seq_length > limit:
        raise ConfigError(f"--seq-length {seq_length} is longer than the {limit} positions of {loaded.path}; give "
                          f"--seq-length {limit} or less.")
    if seq_length < (3 if options.task == "mlm-ppl" else 1):
        raise ConfigError(f"--seq-length {seq_length} is too short for --task {options.task}.")
    return int(seq_length)


def evaluate_zeroshot(loaded: LoadedModel, tokenizer, options: ZeroShotOptions, texts: Optional[Texts] = None
                      ) -> Dict:
    """The metrics (the same dict on every rank); `texts`: options.valid_data already read."""
    adapter = _check_task(loaded, options)
    if options.micro_batch_size < 1:
        raise ConfigError(f"--micro-batch-size must be at least 1, got {options.micro_batch_size}.")
    seq_length = _seq_length(loaded, options)
    head = {"task": options.task, "valid_data": options.valid_data, "load": loaded.path, "family": loaded.family,
            "seq_length": seq_length}
    if options.task == "chid":
        return {**head, **_chid(loaded, tokenizer, options, seq_length)}
    texts = texts or read_texts(options.valid_data, options.text_key)
    if options.task == "lambada":
        return {**head, **_lambada(loaded, tokenizer, options, texts, seq_length, adapter)}
    text = joined_text(texts)
    tokens = tokenizer.tokenize(text)
    words, basis = count_words(text, options.word_count)
    if adapter == "masked_lm":
        nll, scored = _pseudo_log_likelihood(loaded, tokenizer, options, tokens, seq_length)
        return {**head, "tokens": len(tokens), **perplexity_metrics(nll, scored, words, basis, unscored_words=0)}
    found, nll, scored = _stream_log_likelihood(loaded, tokenizer, options, tokens, seq_length, adapter)
    return {**head, **found, "tokens": len(tokens), **perplexity_metrics(nll, scored, words, basis)}


def _chid(loaded, tokenizer, options, seq_length) -> Dict:
    if tokenizer.mask is None or tokenizer.cls is None or tokenizer.sep is None:
        raise ConfigError(f"the tokenizer {tokenizer.name} has no [MASK], [CLS] or [SEP]; use the BERT WordPiece "
                          f"vocabulary the model was trained with.")
    _, items = chid_items(options.valid_data)
    progress = Progress("CHID passages", len(items), options.log_interval)
    predictions = cloze_predictions(loaded.model, tokenizer, items, seq_length, loaded.vocab_size,
                                    options.micro_batch_size, progress)
    progress.finish()
    return cloze_metrics(items, predictions)


def _pad_id(tokenizer) -> int:
    return tokenizer.eod if tokenizer.eod is not None else 0


def _lambada(loaded, tokenizer, options, texts, seq_length, adapter) -> Dict:
    found = {}
    for name, strict in (("strict", True), ("last_token", False)):
        samples = lambada_samples(texts, tokenizer.tokenize, strict)
        progress = Progress(f"LAMBADA samples ({name.replace('_', '-')})", len(samples), options.log_interval)
        correct, truncated = lambada_correct(loaded.model, samples, loaded.vocab_size, seq_length,
                                             options.micro_batch_size, adapter == "transformer_xl",
                                             _pad_id(tokenizer), progress)
        progress.finish()
        found[name] = dict(accuracy_metrics(correct, len(samples)), truncated_contexts=truncated)
    return {"accuracy": found["strict"]["accuracy"], **found}


def _too_short(options, tokens, seq_length, window: str) -> DataError:
    return DataError(f"{options.valid_data} holds {len(tokens)} tokens, fewer than one window of --seq-length "
                     f"{seq_length}{window}; give a longer text or a smaller --seq-length.")


def _pseudo_log_likelihood(loaded, tokenizer, options, tokens, seq_length):
    if len(tokens) < seq_length - 2:
        raise _too_short(options, tokens, seq_length, f" ([CLS] + {seq_length - 2} + [SEP])")
    tok = tokenizer
    if tok.mask is None or tok.cls is None or tok.sep is None:
        raise ConfigError(f"the tokenizer {tok.name} has no [MASK], [CLS] or [SEP]; use the BERT WordPiece "
                          f"vocabulary the model was trained with.")
    progress = Progress("tokens masked", len(tokens), options.log_interval)
    nll, scored = pseudo_log_likelihood(loaded.model, tokens, seq_length, loaded.vocab_size, tok.cls, tok.sep,
                                        tok.mask, options.micro_batch_size, progress)
    progress.finish()
    return nll, scored


def _stream_log_likelihood(loaded, tokenizer, options, tokens, seq_length, adapter):
    """({mem_length or overlapping_eval, windows}, -log-likelihood, scored targets)."""
    if len(tokens) < seq_length + 1:
        raise _too_short(options, tokens, seq_length, " + 1")
    model, memory = loaded.model, adapter == "transformer_xl"
    if memory and options.mem_length is not None:
        if options.mem_length < 0:
            raise ConfigError(f"--mem-length must be 0 (no memory) or more, got {options.mem_length}.")
        model.mem_length = options.mem_length
    windows = lm_windows(len(tokens), seq_length, options.overlapping_eval)
    progress = Progress("windows", len(windows), options.log_interval)
    nll, scored = stream_log_likelihood(model, tokens, windows, loaded.vocab_size, options.micro_batch_size, memory,
                                        _pad_id(tokenizer), progress)
    progress.finish()
    found = {"mem_length": model.mem_length} if memory else {"overlapping_eval": options.overlapping_eval or seq_length}
    return {**found, "windows": len(windows)}, nll, scored
