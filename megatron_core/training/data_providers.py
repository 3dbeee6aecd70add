"""Tokenizer and (train, valid, test) datasets of every model family, from the run's dataclasses.

    tokenizer = build_tokenizer(run.data)
    counts = train_valid_test_num_samples(run.training)
    train, valid, test = gpt_datasets(run.data, run.training, counts)
    train, valid, test = bert_datasets(run.data, run.training, options, tokenizer, counts)   # t5, roformer alike

Sample counts are Megatron's: train iterations x global batch (or --train-samples), and
(train_iters // eval_interval + 1) x eval_iters x global batch for validation, the same
for test. A split asked for 0 samples, or with no share in --split, is None.

`--data-path` is one prefix or weight-prefix pairs for every family; with several prefixes
each split is a BlendedDataset whose parts are asked for their share plus 0.5 %.
BERT, T5 and RoFormer read sentence-split data (preprocess_data.py --split-sentences) and
split it by documents; GPT and Transformer-XL split by sequences; finetune reads one
{"prompt", "text"} JSON-lines file and splits it by lines, T5 finetuning one of
{"source", "target"} lines alike.

Every rank builds the datasets (index caches are built by rank 0 first); only the ranks
that read data (data_iterators.py) ever index them.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch.distributed as dist
from torch.utils.data import Subset

from ..data import builder
from ..data.bert_dataset import BertDataset, BertDatasetConfig
from ..data.blended_dataset import BlendedDataset, parse_data_path
from ..data.epoch_dataset import EpochShuffledDataset
from ..errors import DataError
from ..data.finetune_dataset import FinetuneDataset
from ..data.indexed_dataset import IndexedDataset
from ..data.roformer_dataset import RoFormerDataset
from ..data.seq2seq_dataset import Seq2SeqDataset
from ..data.splits import SPLIT_NAMES, split_ranges
from ..data.t5_dataset import T5Dataset, T5DatasetConfig, extra_id_sentinels, unused_token_sentinels
from ..data.tokenizers import build_tokenizer as build_tokenizer_by_name
from ..data.transformer_xl_dataset import TransformerXLDataset, check_transformer_xl_batch
from .config import DataConfig, TrainingConfig
from .data_options import DataOptions


def build_tokenizer(data: DataConfig):
    """The tokenizer of --tokenizer-type and its files. Its vocab_size is unpadded: the loop pads once."""
    if data.tokenizer_type is None:
        raise DataError("--tokenizer-type is required to read the data; give e.g. BertWordPieceLowerCase with "
                        "--vocab-file, or GPT2BPETokenizer with --vocab-file and --merge-file.")
    return build_tokenizer_by_name(data.tokenizer_type, vocab_file=data.vocab_file, merge_file=data.merge_file,
                                   tokenizer_model=data.tokenizer_model, vocab_extra_ids=data.vocab_extra_ids,
                                   vocab_size=data.vocab_size)


def train_valid_test_num_samples(training: TrainingConfig) -> List[int]:
    """[train, valid, test] samples the run will read, Megatron's way."""
    if training.train_iters is None:
        raise DataError("the run's length is unknown; give --train-iters or --train-samples.")
    train = training.train_samples if training.train_samples is not None \
        else training.train_iters * training.global_batch_size
    eval_iters = (training.train_iters // training.eval_interval + 1) * training.eval_iters
    return [int(train), eval_iters * training.global_batch_size, eval_iters * training.global_batch_size]


def _require_data_path(data: DataConfig):
    if not data.data_path:
        raise DataError("--data-path is required; give the prefix that tools/preprocess_data.py printed "
                        "(or weight-prefix pairs).")
    weights, prefixes = parse_data_path(data.data_path)
    builder.check_prefixes(prefixes)
    return [(w, p) for w, p in zip(weights, prefixes) if w > 0]


def _drop_empty(datasets, num_samples):
    return tuple(None if n == 0 else d for d, n in zip(datasets, num_samples))


def _blend(data: DataConfig, num_samples: Sequence[int], build_split, by_documents: bool = False):
    """Per split: build_split(prefix, split index, document range, samples) for each prefix, blended.

    `build_split` gets the sample count it must provide and returns a dataset or None
    (an empty split). One prefix is returned as it is. Sentence-split data is split by
    documents (`by_documents`), so that a document's sentences stay in one split.
    """
    pairs = _require_data_path(data)
    per_prefix = []
    for weight, prefix in pairs:
        indexed = IndexedDataset(prefix)
        ranges = split_ranges(data.split, indexed.num_documents if by_documents else len(indexed))
        counts = num_samples if len(pairs) == 1 else [int(math.ceil(n * weight * builder.BLEND_MARGIN))
                                                       for n in num_samples]
        per_prefix.append([build_split(indexed, k, ranges[k], counts[k])
                           if counts[k] > 0 and ranges[k][1] > ranges[k][0] else None for k in range(3)])
    if len(pairs) == 1:
        return tuple(per_prefix[0])
    result = []
    for k, name in enumerate(SPLIT_NAMES):
        parts = [datasets[k] for datasets in per_prefix]
        if all(part is None for part in parts):
            result.append(None)
            continue
        for (_, prefix), part in zip(pairs, parts):
            if part is None:
                raise DataError(f"{prefix} has no documents in the {name} split; give that split a larger share "
                                f"in --split or drop the dataset from --data-path.")
        result.append(BlendedDataset(parts, [w for w, _ in pairs], num_samples[k], cache_dir=data.data_cache_path))
    return tuple(result)


# --- families ------------------------------------------------------------------------------------

def gpt_datasets(data: DataConfig, training: TrainingConfig, num_samples: Sequence[int]):
    """GPTDatasets of --seq-length windows (Megatron's builder: split, blend, cache)."""
    _require_data_path(data)
    datasets = builder.build_train_valid_test_datasets(data.data_path, data.split, num_samples,
                                                       training.seq_length, training.seed, data.data_cache_path)
    return _drop_empty(datasets, num_samples)


def transformer_xl_datasets(data: DataConfig, training: TrainingConfig, num_samples: Sequence[int]):
    """Segments of global-batch-size parallel text streams (data/transformer_xl_dataset.py)."""
    check_transformer_xl_batch(training.rampup_batch_size)

    def build_split(indexed, k, document_range, count):
        return TransformerXLDataset(indexed, document_range, count, training.seq_length,
                                    training.global_batch_size, training.seed + k, SPLIT_NAMES[k])
    if len(_require_data_path(data)) > 1:
        raise DataError("Transformer-XL reads one continuous text per batch row; give --data-path one prefix "
                        "(merge corpora with tools/merge_datasets.py).")
    return _blend(data, num_samples, build_split)


def _bert_config(training: TrainingConfig, options: DataOptions, count: int, binary_head: bool) -> BertDatasetConfig:
    return BertDatasetConfig(
        max_seq_length=training.seq_length, masked_lm_prob=options.mask_prob, short_seq_prob=options.short_seq_prob,
        binary_head=binary_head, sentence_order_prediction=options.sentence_order_prediction,
        whole_word_masking="jieba" if options.wwm else "wordpiece", seed=training.seed, num_samples=count)


def bert_datasets(data: DataConfig, training: TrainingConfig, options: DataOptions, tokenizer,
                  num_samples: Sequence[int]):
    """BertDatasets (NSP or SOP, masking, --wwm) of sentence-split data."""
    def build_split(indexed, k, document_range, count):
        return BertDataset(indexed, tokenizer, _bert_config(training, options, count, options.bert_binary_head),
                           document_range, data.data_cache_path, SPLIT_NAMES[k])
    return _blend(data, num_samples, build_split, by_documents=True)


def roformer_datasets(data: DataConfig, training: TrainingConfig, options: DataOptions, tokenizer,
                      num_samples: Sequence[int]):
    """RoFormerDatasets: masked-LM or LM samples (share --roformer-lm-prob) of sentence-split data."""
    def build_split(indexed, k, document_range, count):
        bert = BertDataset(indexed, tokenizer, _bert_config(training, options, count, False),
                           document_range, data.data_cache_path, SPLIT_NAMES[k])
        return RoFormerDataset(bert, options.roformer_lm_prob, training.seed)
    return _blend(data, num_samples, build_split, by_documents=True)


def t5_sentinel_ids(tokenizer) -> List[int]:
    """<extra_id_N> (--vocab-extra-ids), else BERT's [unusedN] slots."""
    ids = extra_id_sentinels(tokenizer)
    if ids:
        return ids
    if "[unused1]" in tokenizer.vocab:
        return unused_token_sentinels(tokenizer.vocab)
    raise DataError(f"the {tokenizer.name} tokenizer has no T5 sentinel tokens; give --vocab-extra-ids 100.")


def t5_datasets(data: DataConfig, training: TrainingConfig, options: DataOptions, tokenizer,
                num_samples: Sequence[int]):
    """T5Datasets (span corruption) of sentence-split data; encoder --encoder-seq-length (or
    --seq-length), decoder --decoder-seq-length."""
    sentinels = t5_sentinel_ids(tokenizer)

    def build_split(indexed, k, document_range, count):
        config = T5DatasetConfig(
            max_seq_length=options.encoder_seq_length or training.seq_length,
            max_seq_length_dec=options.decoder_seq_length, noise_density=options.mask_prob,
            short_seq_prob=options.short_seq_prob, seed=training.seed, num_samples=count)
        return T5Dataset(indexed, tokenizer, config, document_range, data.data_cache_path, SPLIT_NAMES[k],
                         sentinel_ids=sentinels)
    return _blend(data, num_samples, build_split, by_documents=True)


def finetune_datasets(data: DataConfig, training: TrainingConfig, tokenizer, num_samples: Sequence[int],
                      path: Optional[str] = None):
    """{"prompt", "text"} lines of `path` (default: the one --data-path), split by lines with --split;
    each split read for as many shuffled epochs as its sample count needs."""
    full = FinetuneDataset(path or _one_json_lines_file(data), tokenizer, training.seq_length)
    return _split_by_lines(full, data, training, num_samples)


def seq2seq_datasets(data: DataConfig, training: TrainingConfig, options: DataOptions, tokenizer,
                     num_samples: Sequence[int], path: Optional[str] = None):
    """T5 finetuning: {--source-key, --target-key} lines of `path` (default: the one --data-path),
    split by lines with --split as finetune_datasets'; encoder --encoder-seq-length (or
    --seq-length), decoder --decoder-seq-length. Rank 0 prints how many lines were cut."""
    full = Seq2SeqDataset(path or _one_json_lines_file(data), tokenizer,
                          options.encoder_seq_length or training.seq_length, options.decoder_seq_length,
                          options.source_key, options.target_key)
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(full.report.summary(), flush=True)
    return _split_by_lines(full, data, training, num_samples)


def _one_json_lines_file(data: DataConfig) -> str:
    if not data.data_path or len(data.data_path) != 1:
        raise DataError("finetuning reads one JSON-lines file; give --data-path FILE.jsonl.")
    return data.data_path[0]


def _split_by_lines(full, data: DataConfig, training: TrainingConfig, num_samples: Sequence[int]):
    """(train, valid, test) parts of `full` by --split, each read for as many shuffled epochs as
    its sample count needs; a part without lines or samples is None."""
    result = []
    for k, ((start, stop), count) in enumerate(zip(split_ranges(data.split, len(full)), num_samples)):
        if stop <= start or count == 0:
            result.append(None)
            continue
        part = Subset(full, range(start, stop))
        result.append(EpochShuffledDataset(part, count, training.seed + k))
    return tuple(result)
