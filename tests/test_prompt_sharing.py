"""A prompt's pass run once for its G responses (`ral_dist.models.prompt_sharing`) gives the full forward's numbers:
log-probs, attention rows (both alignments) and the gradient of a loss of both, on prompts of different lengths
(left padding), responses of different lengths (right padding), for both model families; sampling from a shared
prefill gives the same tokens, log-probs and rows as from G prefills; and the mini-batch split keeps a prompt's
responses together."""

from __future__ import annotations

import pytest
import torch

from ral_dist.actors.step_layout import minibatch_indices
from ral_dist.data import SYSTEM_PROMPT, read_dataset, user_text
from ral_dist.data.cache import ensure_dataset
from ral_dist.data.data_config import DataConfig
from ral_dist.models import VisualPrompt, get_adapter
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import forward_responses, generate
from ral_dist.models.prompt_sharing import distinct, share_prompts

G, R = 3, 7


@pytest.fixture(scope="module")
def prompts() -> list[VisualPrompt]:
    data = DataConfig(sizes={"train": 8, "val": 4, "test": 4})
    samples, _ = read_dataset(ensure_dataset(data.task, data.sizes), "train")
    # the first prompt longer than the others: the rest are left-padded to it
    return [VisualPrompt(s.get_images(), s.question, text=user_text(s, "think") + (" Look closely." if i == 0 else ""),
                         system=SYSTEM_PROMPT) for i, s in enumerate(samples[:3])]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
@pytest.mark.parametrize("alignment", ["paper", "sampling"])
def test_shared_prompt_pass_equals_the_full_forward(prompts, family, alignment):
    torch.set_num_threads(1)
    adapter = get_adapter(family)
    model, processor = adapter.build_tiny(seed=0)
    use_capture_attention(model).train()
    keys = [k for k in range(len(prompts)) for _ in range(G)]
    rows = [prompts[k] for k in keys]
    batch = adapter.encode(processor, rows)
    shared = share_prompts(adapter, processor, batch, rows, keys)
    assert shared.prompts.inputs["input_ids"].shape == (len(prompts), batch.prompt_len)
    moved = shared.to(torch.device("meta"))  # what a GPU learner does with its batch: every tensor moves
    assert moved.index.is_meta and moved.first_row.is_meta and moved.prompts.inputs["input_ids"].is_meta
    assert len(set(batch.inputs["attention_mask"].sum(1).tolist())) == 2  # two prompt lengths: real left padding

    banned = adapter.banned_token_ids(processor)
    ids = torch.randint(5, 100, (len(rows), R), generator=torch.Generator().manual_seed(0))
    ids = torch.where(torch.isin(ids, torch.tensor(banned)), torch.full_like(ids, 60), ids)
    mask = (torch.arange(R)[None] < torch.tensor([7, 3, 5, 1, 7, 6, 2, 4, 7])[:, None]).long()
    out = {}
    for name, sh in (("full", None), ("shared", shared)):
        model.zero_grad()
        f = forward_responses(adapter, model, batch, ids, mask, processor.tokenizer.pad_token_id, 0.7, banned=banned,
                              alignment=alignment, shared=sh)
        weights = torch.linspace(0, 1, f.attention.numel()).view_as(f.attention)
        (f.logprobs.sum() + 10 * (f.attention * weights).sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        out[name] = f.logprobs.detach(), f.attention.detach(), grads
    (lp, att, grad), (lp_s, att_s, grad_s) = out["full"], out["shared"]
    assert (lp != 0).sum() == mask.sum() and att.abs().sum() > 0
    assert torch.allclose(lp_s, lp, atol=1e-5)
    assert torch.allclose(att_s, att, atol=1e-6)
    assert grad_s.shape == grad.shape and (grad_s - grad).abs().max() <= 1e-5 * grad.abs().max()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
@pytest.mark.parametrize("alignment", ["paper", "sampling"])
def test_sampling_from_a_shared_prefill_equals_sampling_from_each(prompts, family, alignment):
    torch.set_num_threads(1)
    adapter = get_adapter(family)
    model, processor = adapter.build_tiny(seed=0)
    use_capture_attention(model)
    each, shared = (generate(adapter, model, processor, prompts, num_samples=4, max_new_tokens=12, seed=3,
                             capture_question=True, alignment=alignment, share_prompts=share) for share in (False, True))
    assert torch.equal(shared.response_ids, each.response_ids) and torch.equal(shared.response_mask, each.response_mask)
    assert torch.allclose(shared.logprobs, each.logprobs, atol=1e-5)
    assert each.attention.abs().sum() > 0 and torch.allclose(shared.attention, each.attention, atol=1e-6)
    assert each.question_attention.abs().sum() > 0
    assert torch.allclose(shared.question_attention, each.question_attention, atol=1e-6)


def test_no_shared_prompt_means_no_second_encoding(prompts):
    adapter = get_adapter("qwen2_5_vl")
    processor = adapter.build_processor()
    batch = adapter.encode(processor, prompts)
    assert share_prompts(adapter, processor, batch, prompts, [0, 1, 2]) is None
    with pytest.raises(ValueError, match="encode differently"):  # equal keys must mean equal prompts
        share_prompts(adapter, processor, batch, prompts, [0, 0, 2])


def test_distinct_numbers_keys_in_order_of_first_appearance():
    assert distinct(["b", "a", "b", "c", "a"]) == ([0, 1, 0, 2, 1], [0, 1, 3])


def test_minibatches_keep_each_prompts_responses_together():
    prompts = [p for p in "abcdefgh" for _ in range(4)]  # 8 prompts x G 4, grouped as a rank's shard
    for seed in range(5):
        split = minibatch_indices(32, 4, [seed, 0, 0, 0], prompts)
        assert sorted(i for mb in split for i in mb) == list(range(32))
        assert [len(mb) for mb in split] == [8] * 4
        assert all(len({prompts[i] for i in mb}) == 2 for mb in split)  # two whole prompts each
    interleaved = [p for _ in range(4) for p in "abcdefgh"]  # a rank's shard as split_shards deals it
    assert all(len({interleaved[i] for i in mb}) == 2 for mb in minibatch_indices(32, 4, [0, 0, 0, 0], interleaved))
    # without prompts: the seeded permutation of the trajectories, as before prompts were grouped
    import numpy as np

    order = np.random.default_rng([3, 1, 0, 0]).permutation(32)
    assert minibatch_indices(32, 4, [3, 1, 0, 0]) == [mb.tolist() for mb in np.array_split(order, 4)]
