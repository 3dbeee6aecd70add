"""A finetuned T5's answers to source/target JSON lines, written as JSON lines, with their scores.

    lengths = checkpoint_lengths(loaded)                # what the model was finetuned with
    predictions = predict_targets(loaded, tokenizer, [p.source for p in pairs], lengths, batch_size=16)
    write_predictions("out.jsonl", pairs, predictions)  # {"source", "prediction", "target" (if any)}
    scores = corpus_scores(...)                         # generation_metrics.py

Each source is tokenized and cut to the encoder length as finetuning cut it
(data/seq2seq_dataset.py), read by the encoder once, and the decoder writes from T5's
start token until its end token or `max_target_length` tokens (inference/: the KV cache,
T5Decoder, any TP x PP): greedily, or with BeamSettings(beam_size > 1) the best beam of
inference/beam_search.py. Every rank of the model runs this; rank 0 writes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Optional, Sequence

from megatron_core.atomic_files import write_atomically
from megatron_core.data.seq2seq_dataset import SourceTarget
from megatron_core.data.t5_dataset import t5_start_end_ids
from megatron_core.errors import ConfigError
from megatron_core.inference.beam_search import BeamSettings, beam_search
from megatron_core.inference.checkpoint_model import LoadedModel
from megatron_core.inference.decoders import T5Decoder
from megatron_core.inference.generation import generate
from megatron_core.inference.sampling import SamplingParams

GREEDY = SamplingParams(greedy=True)


@dataclass(frozen=True)
class T5Lengths:
    encoder: int            # source tokens kept
    max_target: int         # most tokens written per answer, the end token included


def _position_limit(loaded: LoadedModel) -> Optional[int]:
    """The decoder positions the model has (learned positions), None without a limit."""
    if loaded.config.position_embedding_type != "learned_absolute":
        return None
    return getattr(loaded.model, "max_sequence_length", None)


def checkpoint_lengths(loaded: LoadedModel, max_target_length: Optional[int] = None) -> T5Lengths:
    """The encoder length the checkpoint was trained with and the answer length: `max_target_length`,
    else its --decoder-seq-length (within the decoder's learned positions)."""
    if loaded.family != "t5":
        raise ConfigError(f"{loaded.path} holds a {loaded.family} model; predicting targets needs a T5 "
                          f"checkpoint (pretrain_t5.py or finetune_t5.py).")
    args = loaded.args
    encoder = args.get("encoder_seq_length") or args.get("seq_length")
    limit = _position_limit(loaded)
    # The last token written is never fed back: L tokens use positions 0 .. L - 1 plus the start's.
    most = None if limit is None else limit - 1
    if max_target_length is None:
        max_target_length = int(args.get("decoder_seq_length") or 128)
        if most is not None:
            max_target_length = min(max_target_length, most)
    if max_target_length < 1 or (most is not None and max_target_length > most):
        bound = f" and at most {most} (the decoder's {limit} learned positions less the start token)" \
            if most is not None else ""
        raise ConfigError(f"--max-target-length must be at least 1{bound}, got {max_target_length}.")
    return T5Lengths(int(encoder), int(max_target_length))


def predict_targets(loaded: LoadedModel, tokenizer, sources: Sequence[str], lengths: T5Lengths,
                    batch_size: int = 16, beams: BeamSettings = BeamSettings()) -> List[str]:
    """The answer to each source, as text, in order: greedy at beam size 1, else the best beam."""
    start, end = t5_start_end_ids(tokenizer)
    device = next(loaded.model.parameters()).device
    answers = []
    for first in range(0, len(sources), batch_size):
        batch = [list(ids)[:lengths.encoder] or [end]
                 for ids in tokenizer.tokenize_batch(sources[first:first + batch_size])]
        decoder = T5Decoder(loaded.model, start)
        if beams.beam_size == 1:
            written = generate(decoder, batch, lengths.max_target, GREEDY, loaded.vocab_size, eos_id=end,
                               device=device).tokens
        else:
            found = beam_search(decoder, batch, beams, lengths.max_target, loaded.vocab_size, eos_id=end,
                                device=device)
            written = [beam.tokens for beam in found]
        for tokens in written:
            tokens = tokens[:tokens.index(end)] if end in tokens else tokens
            answers.append(tokenizer.detokenize(tokens))
    return answers


def write_predictions(path: str, pairs: Sequence[SourceTarget], predictions: Sequence[str]) -> None:
    """One {"source", "prediction", "target"} line per pair (no "target" where the line had none)."""
    lines = []
    for pair, prediction in zip(pairs, predictions):
        row = {"source": pair.source, "prediction": prediction}
        if pair.target is not None:
            row["target"] = pair.target
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    text = "".join(lines).encode("utf-8")
    write_atomically(path, lambda f, _tmp: f.write(text))
