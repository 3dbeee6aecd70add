"""vocab_parallel_cross_entropy equals torch's cross entropy on the gathered logits."""
import pytest
import torch
import torch.nn.functional as F

from megatron_core import mpu
from tests.harness import run_distributed

pytestmark = pytest.mark.quick


def _check_cross_entropy(tp):
    mpu.initialize_model_parallel(tp)
    rank = mpu.get_tensor_model_parallel_rank()
    batch, seq, vocab = 3, 5, 8 * tp if tp > 1 else 12
    generator = torch.Generator().manual_seed(11)
    # Large logits check the max-subtraction; targets cover every rank's vocab slice.
    logits = torch.randn(batch, seq, vocab, generator=generator) * 20
    target = torch.randint(0, vocab, (batch, seq), generator=generator)
    weights = torch.rand(batch, seq, generator=generator)
    for label_smoothing in (0.0, 0.1):
        shard = logits.chunk(tp, dim=-1)[rank].clone().requires_grad_()
        loss = mpu.vocab_parallel_cross_entropy(shard, target, label_smoothing=label_smoothing)
        assert loss.shape == target.shape
        (loss * weights).sum().backward()

        full = logits.clone().requires_grad_()
        loss_ref = F.cross_entropy(full.view(-1, vocab), target.view(-1), reduction="none",
                                   label_smoothing=label_smoothing).view(batch, seq)
        (loss_ref * weights).sum().backward()
        torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shard.grad, full.grad.chunk(tp, dim=-1)[rank], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vocab_parallel_cross_entropy_equals_serial(tp):
    run_distributed(_check_cross_entropy, tp, tp)


def _check_half_precision_input():
    mpu.initialize_model_parallel(2)
    rank = mpu.get_tensor_model_parallel_rank()
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    target = torch.tensor([0, 7, 8, 15])
    shard = logits.chunk(2, dim=-1)[rank].to(torch.bfloat16).requires_grad_()
    loss = mpu.vocab_parallel_cross_entropy(shard, target)
    assert loss.dtype == torch.float32  # computed in fp32 whatever the logits' dtype
    loss.sum().backward()
    assert shard.grad.dtype == torch.bfloat16
    ref = F.cross_entropy(logits.to(torch.bfloat16).float(), target, reduction="none")
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


def test_bf16_logits_computed_in_fp32():
    run_distributed(_check_half_precision_input, 2)


def test_bad_label_smoothing_is_one_sentence():
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        mpu.vocab_parallel_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), label_smoothing=1.5)
