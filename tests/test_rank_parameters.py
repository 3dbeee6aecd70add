"""The parameter counts of models/rank_parameters.py equal the tensors of models actually built:
every family, TP=1 and TP=2 (real gloo ranks, each counting its own shard), every pipeline
stage of PP=2, interleaved virtual chunks, a padded vocabulary."""
import pytest
from megatron_core import mpu
from megatron_core.models.bert import BertModel
from megatron_core.models.gpt import GPTModel
from megatron_core.models.rank_parameters import ModelShape, rank_parameters
from megatron_core.models.roformer import RoFormerModel
from megatron_core.models.t5 import T5Model
from megatron_core.models.transformer_xl import TransformerXLModel
from megatron_core.mpu.layout import PipelineStage, pad_vocab_size
from tests.harness import run_distributed
from megatron_core.transformer import TransformerConfig

pytestmark = pytest.mark.quick

VOCAB = pad_vocab_size(100, 8, 2)    # 112: a tokenizer's 100 ids padded as Megatron does
SEQ = 16


def _cases(tp: int):
    """(name, shape, build(stage)) for each family and layout variant."""
    def config(**overrides):
        return TransformerConfig(num_layers=4, hidden_size=32, num_attention_heads=4, tensor_model_parallel_size=tp,
                                 **overrides)
    gpt = config()
    llama = config(normalization="RMSNorm", activation="swiglu", num_query_groups=2, add_bias_linear=False,
                   share_embeddings_and_output_weights=False, position_embedding_type="rope", ffn_hidden_size=48)
    bert = config(layernorm_position="post")
    megatron_bert = config()
    roformer = config(position_embedding_type="rope", rotary_interleaved=True)
    xl = config(position_embedding_type="relative_xl", activation="gelu_tanh")
    t5_hf = config(position_embedding_type="t5_relative", normalization="RMSNorm", add_bias_linear=False,
                   activation="geglu", share_embeddings_and_output_weights=False, ffn_hidden_size=40)
    t5_megatron = config()
    return [
        ("gpt", ModelShape("gpt", gpt, VOCAB, SEQ, structure="decoder"),
         lambda s: GPTModel(gpt, VOCAB, SEQ, stage=s)),
        ("llama", ModelShape("gpt", llama, VOCAB, SEQ, structure="decoder"),
         lambda s: GPTModel(llama, VOCAB, SEQ, stage=s)),
        ("bert post-LN", ModelShape("bert", bert, VOCAB, SEQ, num_tokentypes=2, add_pooler=True, add_binary_head=True,
                                    structure="masked_lm"),
         lambda s: BertModel(bert, VOCAB, SEQ, 2, True, stage=s)),
        ("megatron bert no head", ModelShape("bert", megatron_bert, VOCAB, SEQ, structure="masked_lm"),
         lambda s: BertModel(megatron_bert, VOCAB, SEQ, 0, False, stage=s)),
        ("roformer", ModelShape("roformer", roformer, VOCAB, SEQ, num_tokentypes=2, structure="masked_lm"),
         lambda s: RoFormerModel(roformer, VOCAB, SEQ, stage=s)),
        ("transformer-xl", ModelShape("transformer_xl", xl, VOCAB, structure="transformer_xl"),
         lambda s: TransformerXLModel(xl, VOCAB, 8, stage=s)),
        ("transformer-xl untie_r", ModelShape("transformer_xl", xl, VOCAB, untie_r=True,
                                              structure="transformer_xl"),
         lambda s: TransformerXLModel(xl, VOCAB, 8, stage=s, untie_r=True)),
        ("t5 (HF)", ModelShape("t5", t5_hf, VOCAB, decoder_num_layers=2, structure="encoder_decoder"),
         lambda s: T5Model(t5_hf, VOCAB, 2, 0, stage=s)),
        ("t5 (Megatron)", ModelShape("t5", t5_megatron, VOCAB, SEQ, lm_head_bias=True, structure="encoder_decoder"),
         lambda s: T5Model(t5_megatron, VOCAB, None, SEQ, lm_head_bias=True, stage=s)),
    ]


def _layouts(family: str):
    """(pipeline size, virtual size, split rank) of the layouts each family runs."""
    if family == "t5":
        return [(1, None, None), (2, None, 1)]
    return [(1, None, None), (2, None, None), (2, 2, None)]


def _held(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_counts(tp: int) -> None:
    mpu.initialize_model_parallel(tensor_model_parallel_size=tp)
    try:
        for name, shape, build in _cases(tp):
            for size, virtual, split in _layouts(shape.family):
                for rank in range(size):
                    chunks = [build(PipelineStage(rank, size, v if virtual else None, virtual, split))
                              for v in range(virtual or 1)]
                    held = sum(_held(c) for c in chunks)
                    estimated = rank_parameters(shape, rank, size, virtual, split)
                    assert estimated == held, (name, tp, size, virtual, rank, estimated, held)
            if tp == 1:
                whole = build(PipelineStage(0, 1))
                assert shape.total() == _held(whole) == rank_parameters(shape), name
    finally:
        mpu.destroy_model_parallel()


def test_rank_parameters_equal_the_tensors_built_at_tp1_every_stage_and_family():
    run_distributed(_check_counts, 1, 1)


def test_rank_parameters_equal_each_tp2_rank_own_shard_every_stage_and_family():
    run_distributed(_check_counts, 2, 2)


def test_total_is_the_serial_count_whatever_the_tensor_parallel_size():
    for (_, one, _), (_, two, _) in zip(_cases(1), _cases(2)):
        assert one.total() == two.total()
