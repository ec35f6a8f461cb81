"""The learner's state dict through Ray's object store (`ral_dist.messages.weights.WireState`): the same values,
dtypes and names on arrival, a tied tensor sent once and shared again, and the arrival a view of the stored bytes
(no copy out of the store)."""

import ray
import torch

from ral_dist.messages.weights import WireState


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
    finally:
        ray.shutdown()
    assert type(got) is dict and list(got) == list(state)
    for name, t in state.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape and torch.equal(got[name], t), name
    assert got["head.weight"].data_ptr() == got["embed.weight"].data_ptr()  # tied: one tensor again
    assert got["w"].data_ptr() == stored["w"].data_ptr()  # both reads are views of the one stored copy
    model = torch.nn.Linear(4, 3)
    model.load_state_dict({"weight": got["w"], "bias": got["half"][:3].float()})  # read-only views load
    assert torch.equal(model.weight.detach(), state["w"])
