"""The learner's state dict through Ray's object store (`ral_dist.messages.weights.WireState`): the same values,
dtypes and names on arrival, a tied tensor sent once and shared again, and the arrival a view of the stored bytes
(no copy out of the store); a CPU model keeps those views as its weights (`load_weights`)."""

import pytest
import ray
import torch

from ral_dist.messages.weights import WireState, load_weights


def test_a_state_arrives_whole_with_its_ties_and_without_a_copy():
    emb = torch.randn(100, 8)
    state = WireState({"embed.weight": emb, "w": torch.randn(3, 4), "head.weight": emb,
                       "half": torch.randn(5).to(torch.bfloat16), "scalar": torch.tensor(2.5),
                       "strided": torch.randn(4, 6).t()})
    ray.init(num_cpus=1, include_dashboard=False, address="local")
    try:
        ref = ray.put(state)
        got = ray.get(ref)
        stored = ray.get(ref)
        tied = torch.nn.Sequential(torch.nn.Embedding(100, 8), torch.nn.Linear(8, 100, bias=False))
        tied[1].weight = tied[0].weight
        load_weights(tied, ray.get(ray.put(WireState({"0.weight": emb, "1.weight": emb}))))
    finally:
        ray.shutdown()
    # a CPU model of the state's dtypes holds the stored bytes themselves, its tie kept
    assert tied[0].weight.data_ptr() == tied[1].weight.data_ptr() != emb.data_ptr()
    assert torch.equal(tied[0].weight.detach(), emb) and tied[0].weight.requires_grad
    assert type(got) is dict and list(got) == list(state)
    for name, t in state.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t), name
    assert got["head.weight"].data_ptr() == got["embed.weight"].data_ptr()  # tied: one tensor again
    assert got["w"].data_ptr() == stored["w"].data_ptr()  # both reads are views of the one stored copy
    model = torch.nn.Linear(4, 3)
    model.load_state_dict({"weight": got["w"], "bias": got["half"][:3].float()})  # read-only views load
    assert torch.equal(model.weight.detach(), state["w"])


def test_weights_of_another_dtype_are_copied_and_a_wrong_state_fails_loudly():
    model = torch.nn.Linear(4, 3)
    half = {"weight": torch.randn(3, 4).to(torch.bfloat16), "bias": torch.randn(3).to(torch.bfloat16)}
    load_weights(model, half)
    assert model.weight.dtype == torch.float32 and model.weight.data_ptr() != half["weight"].data_ptr()
    assert torch.equal(model.weight.detach(), half["weight"].float())
    same = {"weight": torch.randn(3, 4), "bias": torch.randn(3)}
    load_weights(model, same)
    assert model.weight.data_ptr() == same["weight"].data_ptr()
    with pytest.raises(RuntimeError, match="Missing key"):
        load_weights(model, {"weight": torch.randn(3, 4)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(model, {"weight": torch.randn(4, 4), "bias": torch.randn(3)})
