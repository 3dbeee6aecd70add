"""Tensor-parallel layers equal the serial torch computation, forward and every gradient."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_core import mpu
from tests.harness import run_distributed

pytestmark = pytest.mark.quick

SEED = 1234
TOL = dict(rtol=1e-5, atol=1e-5)


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def _master(shape, init, seed):
    """The weight a TP=1 layer built from `seed` holds: drawn from the default generator."""
    torch.manual_seed(seed)
    weight = torch.empty(shape)
    init(weight)
    return weight


def _shard(full, dim, rank=None, world=None):
    rank = mpu.get_tensor_model_parallel_rank() if rank is None else rank
    world = mpu.get_tensor_model_parallel_world_size() if world is None else world
    return full.chunk(world, dim=dim)[rank]


def _inputs(*shape, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


def _check_column(tp):
    mpu.initialize_model_parallel(tp)
    batch, seq, d_in, d_out = 2, 4, 6, 8
    init = mpu.init_method_normal(0.5)
    for gather_output in (True, False):
        torch.manual_seed(SEED)
        layer = mpu.ColumnParallelLinear(d_in, d_out, gather_output=gather_output, init_method=init)
        with torch.no_grad():  # a non-zero bias so its gradient path is exercised
            layer.bias.copy_(_shard(torch.arange(d_out, dtype=torch.float32) / 10, 0))
        weight = _master((d_out, d_in), init, SEED)
        _close(layer.weight, _shard(weight, 0), "column weight is a shard of the serial weight")
        bias = torch.arange(d_out, dtype=torch.float32) / 10

        x = _inputs(batch, seq, d_in).requires_grad_()
        out, returned_bias = layer(x)
        assert returned_bias is None
        grad_out = _inputs(batch, seq, d_out, seed=8)
        (out * (grad_out if gather_output else _shard(grad_out, -1))).sum().backward()

        x_ref = x.detach().clone().requires_grad_()
        w_ref, b_ref = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        out_ref = F.linear(x_ref, w_ref, b_ref)
        (out_ref * grad_out).sum().backward()
        _close(out, out_ref if gather_output else _shard(out_ref, -1), "column output")
        _close(x.grad, x_ref.grad, "column input grad")
        _close(layer.weight.grad, _shard(w_ref.grad, 0), "column weight grad")
        _close(layer.bias.grad, _shard(b_ref.grad, 0), "column bias grad")

    # skip_bias_add returns the (partitioned) bias instead of adding it
    layer = mpu.ColumnParallelLinear(d_in, d_out, gather_output=False, skip_bias_add=True)
    out, returned_bias = layer(_inputs(3, d_in))
    assert returned_bias is layer.bias and returned_bias.shape == (d_out // tp,)


def _check_column_stride(tp):
    """stride=2 splits a fused [A; B] weight so each rank holds its part of A and of B."""
    mpu.initialize_model_parallel(tp)
    d_in, d_out = 4, 8
    init = mpu.init_method_normal(1.0)
    torch.manual_seed(SEED)
    layer = mpu.ColumnParallelLinear(d_in, d_out, gather_output=False, init_method=init, stride=2)
    weight = _master((d_out, d_in), init, SEED)
    first, second = weight.chunk(2, dim=0)
    expected = torch.cat([_shard(first, 0), _shard(second, 0)], dim=0)
    _close(layer.weight, expected, "strided column weight")


def _check_row(tp):
    mpu.initialize_model_parallel(tp)
    batch, seq, d_in, d_out = 2, 3, 8, 5
    init = mpu.init_method_normal(0.5)
    for input_is_parallel in (False, True):
        torch.manual_seed(SEED)
        layer = mpu.RowParallelLinear(d_in, d_out, input_is_parallel=input_is_parallel, init_method=init)
        bias = torch.linspace(-1, 1, d_out)
        with torch.no_grad():
            layer.bias.copy_(bias)
        weight = _master((d_out, d_in), init, SEED)
        _close(layer.weight, _shard(weight, 1), "row weight is a shard of the serial weight")

        x_full = _inputs(batch, seq, d_in)
        x = (_shard(x_full, -1) if input_is_parallel else x_full).clone().requires_grad_()
        out, returned_bias = layer(x)
        assert returned_bias is None
        grad_out = _inputs(batch, seq, d_out, seed=9)
        (out * grad_out).sum().backward()

        x_ref = x_full.clone().requires_grad_()
        w_ref, b_ref = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        out_ref = F.linear(x_ref, w_ref, b_ref)
        (out_ref * grad_out).sum().backward()
        _close(out, out_ref, "row output")
        _close(x.grad, _shard(x_ref.grad, -1) if input_is_parallel else x_ref.grad, "row input grad")
        _close(layer.weight.grad, _shard(w_ref.grad, 1), "row weight grad")
        _close(layer.bias.grad, b_ref.grad, "row bias grad")


def _check_column_then_row(tp):
    """The Megatron MLP pattern: column (no gather) -> gelu -> row (input parallel)."""
    mpu.initialize_model_parallel(tp)
    hidden, ffn = 6, 12
    torch.manual_seed(SEED)
    fc1 = mpu.ColumnParallelLinear(hidden, ffn, gather_output=False)
    fc2 = mpu.RowParallelLinear(ffn, hidden, input_is_parallel=True)
    torch.manual_seed(SEED)
    w1 = torch.empty(ffn, hidden); mpu.xavier_normal(w1)
    w2 = torch.empty(hidden, ffn); mpu.xavier_normal(w2)
    x = _inputs(5, hidden).requires_grad_()
    out = fc2(F.gelu(fc1(x)[0]))[0]
    out.square().sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    w1r, w2r = w1.clone().requires_grad_(), w2.clone().requires_grad_()
    out_ref = F.linear(F.gelu(F.linear(x_ref, w1r)), w2r)
    out_ref.square().sum().backward()
    _close(out, out_ref, "mlp output")
    _close(x.grad, x_ref.grad, "mlp input grad")
    _close(fc1.weight.grad, _shard(w1r.grad, 0), "fc1 grad")
    _close(fc2.weight.grad, _shard(w2r.grad, 1), "fc2 grad")


def _check_embedding(tp):
    mpu.initialize_model_parallel(tp)
    vocab, dim = 16, 5
    init = mpu.init_method_normal(1.0)
    torch.manual_seed(SEED)
    embedding = mpu.VocabParallelEmbedding(vocab, dim, init_method=init)
    weight = _master((vocab, dim), init, SEED)
    _close(embedding.weight, _shard(weight, 0), "embedding weight shard")
    ids = torch.tensor([[0, 3, 15, 8, 8], [7, 9, 1, 12, 3]])
    grad_out = _inputs(2, 5, dim, seed=3)
    out = embedding(ids)
    (out * grad_out).sum().backward()
    w_ref = weight.clone().requires_grad_()
    out_ref = F.embedding(ids, w_ref)
    (out_ref * grad_out).sum().backward()
    _close(out, out_ref, "embedding output")
    _close(embedding.weight.grad, _shard(w_ref.grad, 0), "embedding grad")


def _check_sequence_parallel(tp):
    """Sequence-parallel layers ([seq, batch, hidden], seq split) equal the serial ones."""
    mpu.initialize_model_parallel(tp)
    seq, batch, hidden, ffn, vocab = 8, 2, 6, 8, 16
    torch.manual_seed(SEED)
    embedding = mpu.VocabParallelEmbedding(vocab, hidden, reduce_scatter_embeddings=True)
    fc1 = mpu.ColumnParallelLinear(hidden, ffn, gather_output=False, sequence_parallel=True)
    fc2 = mpu.RowParallelLinear(ffn, hidden, input_is_parallel=True, sequence_parallel=True)
    with torch.no_grad():
        fc2.bias.copy_(torch.linspace(-1, 1, hidden))
    torch.manual_seed(SEED)
    emb_w = torch.empty(vocab, hidden); mpu.xavier_normal(emb_w)
    w1 = torch.empty(ffn, hidden); mpu.xavier_normal(w1)
    w2 = torch.empty(hidden, ffn); mpu.xavier_normal(w2)
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(5))
    grad_out = _inputs(seq, batch, hidden, seed=4)

    h = embedding(ids)  # [seq/tp, batch, hidden]
    assert h.shape == (seq // tp, batch, hidden)
    out = fc2(F.gelu(fc1(h)[0]))[0]  # [seq/tp, batch, hidden]
    (out * _shard(grad_out, 0)).sum().backward()
    mpu.allreduce_sequence_parallel_gradients(list(fc1.parameters()) + list(fc2.parameters()))

    ew, w1r, w2r = emb_w.clone().requires_grad_(), w1.clone().requires_grad_(), w2.clone().requires_grad_()
    b2r = torch.linspace(-1, 1, hidden).requires_grad_()
    h_ref = F.embedding(ids, ew).transpose(0, 1)
    out_ref = F.linear(F.gelu(F.linear(h_ref, w1r)), w2r, b2r)
    (out_ref * grad_out).sum().backward()
    _close(out, _shard(out_ref, 0), "sequence-parallel output")
    _close(embedding.weight.grad, _shard(ew.grad, 0), "sp embedding grad")
    _close(fc1.weight.grad, _shard(w1r.grad, 0), "sp fc1 grad")
    _close(fc2.weight.grad, _shard(w2r.grad, 1), "sp fc2 grad")
    _close(fc2.bias.grad, b2r.grad, "sp row bias grad (after all-reduce)")


def _check_mappings(tp):
    """Each mapping's forward and backward against its definition."""
    mpu.initialize_model_parallel(tp)
    rank = mpu.get_tensor_model_parallel_rank()
    full = _inputs(4, 6 * tp if False else 4 * tp)
    # scatter / gather along the last dimension are inverse, and adjoint in backward
    x = full.clone().requires_grad_()
    part = mpu.scatter_to_tensor_model_parallel_region(x)
    _close(part, _shard(full, -1), "scatter")
    (part * (rank + 1)).sum().backward()
    expected_grad = torch.cat([torch.full((4, 4), float(r + 1)) for r in range(tp)], dim=-1)
    _close(x.grad, expected_grad, "scatter backward = gather")
    y = _shard(full, -1).clone().requires_grad_()
    gathered = mpu.gather_from_tensor_model_parallel_region(y)
    _close(gathered, full, "gather")
    (gathered * torch.arange(full.numel()).view_as(full)).sum().backward()
    _close(y.grad, _shard(torch.arange(full.numel(), dtype=torch.float32).view_as(full), -1), "gather backward")
    # copy / reduce
    z = torch.ones(3, requires_grad=True)
    (mpu.copy_to_tensor_model_parallel_region(z) * (rank + 1)).sum().backward()
    _close(z.grad, torch.full((3,), float(sum(range(1, tp + 1)))), "copy backward = all-reduce")
    w = (torch.ones(3) * (rank + 1)).requires_grad_()
    reduced = mpu.reduce_from_tensor_model_parallel_region(w)
    _close(reduced, torch.full((3,), float(sum(range(1, tp + 1)))), "reduce forward")
    reduced.sum().backward()
    _close(w.grad, torch.ones(3), "reduce backward = identity")
    # sequence-parallel pair along dim 0
    seq_full = _inputs(2 * tp, 3)
    s = seq_full.clone().requires_grad_()
    piece = mpu.scatter_to_sequence_parallel_region(s)
    _close(piece, _shard(seq_full, 0), "sequence scatter")
    g = _shard(seq_full, 0).clone().requires_grad_()
    _close(mpu.gather_from_sequence_parallel_region(g), seq_full, "sequence all-gather")
    r = (seq_full * (rank + 1)).requires_grad_()
    rs = mpu.reduce_scatter_to_sequence_parallel_region(r)
    _close(rs, _shard(seq_full * sum(range(1, tp + 1)), 0), "sequence reduce-scatter")
    rs.sum().backward()
    _close(r.grad, torch.ones_like(seq_full), "reduce-scatter backward = all-gather")


CHECKS = [_check_column, _check_column_stride, _check_row, _check_column_then_row, _check_embedding,
          _check_sequence_parallel, _check_mappings]


def _run_all(tp):
    for check in CHECKS:
        check(tp)
        mpu.destroy_model_parallel()


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_layers_equal_serial(tp):
    run_distributed(_run_all, tp, tp)


def _check_dp_replicas_have_identical_layers():
    """World 4, TP=2: both data-parallel replicas hold the same shards."""
    mpu.initialize_model_parallel(2)
    torch.manual_seed(SEED)
    layer = mpu.ColumnParallelLinear(4, 8)
    gathered = [torch.empty_like(layer.weight) for _ in range(4)]
    dist.all_gather(gathered, layer.weight.detach())
    _close(gathered[0], gathered[2], "replica shard 0")
    _close(gathered[1], gathered[3], "replica shard 1")


def test_data_parallel_replicas_identical():
    run_distributed(_check_dp_replicas_have_identical_layers, 4)
