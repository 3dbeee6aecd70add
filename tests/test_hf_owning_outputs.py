"""owning_outputs (models/hf/common.py): a conversion's outputs never share storage with its
inputs or with each other, and what the conversion made fresh is not copied again (a streamed
import then holds one window's inputs and outputs, not a third copy; the --from-hf memory
test measures that)."""
import pytest
import torch

from megatron_core.models.hf.common import owning_outputs

pytestmark = pytest.mark.quick


def _storage(tensor):
    return tensor.untyped_storage().data_ptr()


@owning_outputs
def _convert(state):
    a, b = state["a"], state["b"]
    fresh = torch.cat([a, b])
    halves = torch.cat([b, b]).chunk(2)
    return {"passed_through": a, "transposed_view": b.t(), "fresh": fresh, "tied_1": halves[0],
            "tied_2": halves[1], "slice_of_fresh": torch.cat([a, a])[:2], "meta": torch.empty(3, device="meta")}


def test_inputs_and_shared_storage_are_copied_and_fresh_tensors_are_kept():
    state = {"a": torch.randn(2, 3), "b": torch.randn(3, 3)}
    inputs = {_storage(t) for t in state.values()}
    out = _convert(state)
    torch.testing.assert_close(out["passed_through"], state["a"], rtol=0, atol=0)
    torch.testing.assert_close(out["transposed_view"], state["b"].t(), rtol=0, atol=0)
    real = {k: v for k, v in out.items() if not v.is_meta}
    assert not inputs & {_storage(v) for v in real.values()}
    assert len({_storage(v) for v in real.values()}) == len(real)        # no two outputs share storage
    for value in real.values():                                        # each owns exactly its bytes
        assert value.untyped_storage().nbytes() == value.numel() * value.element_size()
    assert out["meta"].is_meta


def test_a_fresh_whole_tensor_is_returned_without_a_copy():
    made = []

    @owning_outputs
    def convert(state):
        made.append(torch.cat([state["a"], state["a"]]))
        return {"fresh": made[0]}

    assert _storage(convert({"a": torch.ones(4)})["fresh"]) == _storage(made[0])
