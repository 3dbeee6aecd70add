"""BERT (post-LN and MegatronBERT), and RoFormer at TP=2 give the TP=1 loss and gradients.

One spawn of 2 gloo ranks runs every case twice: TP=1 first (the ranks are then two
replicas of the serial model), then TP=2. Both phases build the model from the same
seeds, so the TP=2 weights must start as shards of the serial ones; every parameter is
then overwritten with a deterministic random value (biases and norms included) and the
full pretraining loss (masked MLM mean + NSP/SOP, or RoFormer's mixed LM/MLM targets) is
compared, with every gradient against its shard of the serial gradient.
"""

import torch

from megatron_core import mpu
from megatron_core.models.bert import BertModel, bert_pretraining_loss, masked_mean
from megatron_core.models.roformer import RoFormerModel, unified_lm_targets
from tests.harness import run_distributed
from megatron_core.transformer import TransformerConfig
from tests.harness.model_checks import local_shard
from tests.harness.weights import perturb_by_name, seeded_generator

TOL = dict(rtol=1e-4, atol=2e-5)
VOCAB, MAX_POS, B, S = 96, 16, 3, 10
BASE = dict(num_layers=2, hidden_size=16, num_attention_heads=4, ffn_hidden_size=32, hidden_dropout=0.0,
            attention_dropout=0.0, init_seed=5, layernorm_epsilon=1e-12)
DROP = dict(hidden_dropout=0.2, attention_dropout=0.2, tp_invariant_dropout=True)
ROPE = dict(position_embedding_type="rope", rotary_interleaved=True)

# name -> (model class, config overrides)
CASES = {
    "bert_post_ln": (BertModel, dict(layernorm_position="post")),
    "megatron_bert_pre_ln": (BertModel, dict(layernorm_position="pre")),
    "bert_post_ln_sequence_parallel": (BertModel, dict(layernorm_position="post", sequence_parallel=True)),
    "megatron_bert_untied_dropout": (BertModel, dict(DROP, layernorm_position="pre",
                                                     share_embeddings_and_output_weights=False)),
    "roformer_post_ln_hf": (RoFormerModel, dict(ROPE, layernorm_position="post")),
    "roformer_pre_ln_zhouwenwang_sp_dropout": (RoFormerModel, dict(ROPE, **DROP, layernorm_position="pre",
                                                                   sequence_parallel=True)),
}


def _batch():
    """Tokens, padding, token types, MLM labels and loss mask, sentence order: as the datasets give them."""
    ids = torch.randint(0, VOCAB, (B, S), generator=seeded_generator(1))
    padding = torch.ones(B, S, dtype=torch.long)
    padding[1, 7:] = 0
    types = torch.zeros(B, S, dtype=torch.long)
    types[0, 5:] = 1  # BERT: sentence B; RoFormer: a prefix-LM sample
    types[2, :] = 1  # RoFormer: a pure causal LM sample (sample 1 is MLM)
    loss_mask = (torch.rand(B, S, generator=seeded_generator(2)) < 0.4).long() * padding
    loss_mask[:, 1] = 1
    labels = torch.randint(0, VOCAB, (B, S), generator=seeded_generator(3))
    return ids, padding, types, labels, loss_mask, torch.tensor([0, 1, 1])


def _run(model_cls, overrides, tp, serial_init=None):
    config = TransformerConfig(**{**BASE, **overrides, "tensor_model_parallel_size": tp})
    torch.manual_seed(1)
    model = model_cls(config, VOCAB, MAX_POS)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    if serial_init is not None:
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), local_shard(p, serial_init[n]), rtol=0, atol=0,
                                       msg=lambda m: f"initial {n} is not a shard of the serial weight: {m}")
    perturb_by_name(model)
    ids, padding, types, labels, loss_mask, order = _batch()
    torch.manual_seed(2024)  # the dropout stream, alike on every rank and in both phases
    if model_cls is RoFormerModel:
        labels, loss_mask = unified_lm_targets(ids, types, padding, labels, loss_mask)
        per_token, binary = model(ids, padding, types, lm_labels=labels)
        assert binary is None
        loss = masked_mean(per_token, loss_mask)
    else:
        per_token, binary = model(ids, padding, types, lm_labels=labels)
        loss = bert_pretraining_loss(per_token, binary, loss_mask, order)
    loss.backward()
    mpu.allreduce_sequence_parallel_gradients(model.parameters())
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values())
    return dict(loss=loss.detach(), per_token=per_token.detach(), grads=grads, init=init, model=model)


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def _check_all_cases():
    mpu.initialize_model_parallel(1)
    mpu.model_parallel_manual_seed(123)
    serial = {name: _run(cls, overrides, 1) for name, (cls, overrides) in CASES.items()}
    # Dropout really is on in the dropout cases: evaluation mode changes the loss.
    cls, overrides = CASES["megatron_bert_untied_dropout"]
    ids, padding, types, labels, _, _ = _batch()
    model = serial["megatron_bert_untied_dropout"]["model"].eval()
    with torch.no_grad():
        assert not torch.allclose(model(ids, padding, types, lm_labels=labels)[0],
                                  serial["megatron_bert_untied_dropout"]["per_token"])
    mpu.destroy_model_parallel()

    mpu.initialize_model_parallel(2)
    mpu.model_parallel_manual_seed(123)
    for name, (cls, overrides) in CASES.items():
        ref = serial[name]
        result = _run(cls, overrides, 2, serial_init=ref["init"])
        params = dict(result["model"].named_parameters())
        assert set(params) == set(ref["grads"]), name
        _close(result["loss"], ref["loss"], f"{name}: TP=2 loss")
        _close(result["per_token"], ref["per_token"], f"{name}: TP=2 per-token loss")
        for n, param in params.items():
            _close(result["grads"][n], local_shard(param, ref["grads"][n]), f"{name}: TP=2 grad of {n}")


def test_bert_and_roformer_tp2_equal_serial():
    run_distributed(_check_all_cases, 2, timeout=240)
