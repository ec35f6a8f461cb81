"""Generation: EOS masking, log-probs from the sampling weights, attention rows beside them."""

import pytest
import torch

from ral_dist.config import DataConfig
from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.models import get_adapter
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import eos_mask, forward_responses, generate
from ral_dist.models.prompting import visual_prompt


def _bias_head(model, token_ids: list[int], bias: float) -> None:
    """The model's own output projection plus ``bias`` on the logits of ``token_ids``."""
    head = model.lm_head
    model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        model.lm_head.weight.copy_(head.weight)
        model.lm_head.bias.zero_()
        model.lm_head.bias[token_ids] = bias


def test_eos_mask_keeps_the_first_eos_and_drops_the_rest():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    assert eos_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_sampled_logprobs_and_attention_match_a_fresh_scoring_pass():
    adapter = get_adapter("qwen2_5_vl")
    model, processor = adapter.build_tiny(seed=2)
    use_capture_attention(model)
    samples = generate_samples(GroundedVQAConfig.at_stage(4, fraction_video=0.5), "train", 3)
    gen = generate(adapter, model, processor, [visual_prompt(s, DataConfig()) for s in samples], num_samples=2,
                   max_new_tokens=10, temperature=0.7, capture=True, capture_question=True, seed=0)
    assert gen.response_ids.shape[0] == 6 and gen.attention.shape[:2] == gen.response_ids.shape
    # prompt-major order: rows 2k and 2k+1 share prompt k
    assert torch.equal(gen.prompts.inputs["input_ids"][0], gen.prompts.inputs["input_ids"][1])
    assert (gen.logprobs[gen.response_mask == 0] == 0).all() and (gen.logprobs[gen.response_mask == 1] < 0).all()
    # rescoring the same sequences one by one (different padding) gives the same numbers
    for row in (0, 5):
        single = adapter.encode(processor, [visual_prompt(samples[row // 2], DataConfig())])
        n = int(gen.response_mask[row].sum())
        with torch.no_grad():
            fwd = forward_responses(adapter, model, single, gen.response_ids[row : row + 1, :n],
                                    gen.response_mask[row : row + 1, :n], processor.tokenizer.pad_token_id,
                                    temperature=0.7, banned=adapter.banned_token_ids(processor))
        lp, attn = fwd.logprobs, fwd.attention
        assert torch.allclose(lp[0], gen.logprobs[row, :n], atol=1e-4)
        shift = gen.prompts.prompt_len - single.prompt_len  # left padding of the batched prompt
        assert torch.allclose(attn[0], gen.attention[row, :n, shift:], atol=1e-5)
    # question rows are captured too and are proper distributions
    valid = gen.question_rows >= 0
    assert torch.allclose(gen.question_attention[valid].sum(-1), torch.ones(int(valid.sum())), atol=1e-5)


@pytest.mark.parametrize(("family", "alignment"), [("qwen2_5_vl", "paper"), ("qwen2_5_vl", "sampling"),
                                                   ("idefics3", "paper")])
def test_responses_that_stop_early_keep_their_eos_row_and_match_a_scoring_pass(family, alignment):
    """The rows come from the sampling passes: an EOS row exists only once that EOS is fed back, so generation must
    not stop when the last row samples its EOS. Checked against one scoring forward over the same padded batch."""
    adapter = get_adapter(family)
    model, processor = adapter.build_tiny(seed=3)
    eos = adapter.eos_token_ids(processor)
    _bias_head(model, eos, 6.5)  # EOS gets about half the mass at every step: every row stops within a few tokens
    use_capture_attention(model)
    samples = generate_samples(GroundedVQAConfig.at_stage(4, fraction_video=0.5), "train", 3)
    gen = generate(adapter, model, processor, [visual_prompt(s, DataConfig()) for s in samples], num_samples=4,
                   max_new_tokens=16, temperature=0.9, capture=True, capture_question=True, alignment=alignment,
                   seed=0)
    lengths = gen.response_mask.sum(1)
    assert gen.response_ids.shape[1] < 16 and lengths.min() < lengths.max()  # stopped early, at different tokens
    assert len(set(gen.prompts.inputs["attention_mask"].sum(1).tolist())) > 1  # left padding in the batch
    with torch.no_grad():
        fwd = forward_responses(adapter, model, gen.prompts, gen.response_ids, gen.response_mask,
                                processor.tokenizer.pad_token_id, temperature=0.9, banned=adapter.banned_token_ids(
                                    processor), capture_question=True, alignment=alignment)
    lp, attn, q_attn = fwd.logprobs, fwd.attention, fwd.question_attention
    assert torch.allclose(gen.logprobs, lp, atol=1e-5)
    assert torch.allclose(gen.attention, attn, atol=1e-5) and torch.allclose(gen.question_attention, q_attn)
    eos_rows = gen.attention[torch.arange(len(lengths)), lengths - 1]  # every response's last (EOS) token
    assert torch.allclose(eos_rows.sum(-1), torch.ones(len(lengths)), atol=1e-5)


def test_greedy_generation_is_deterministic():
    adapter = get_adapter("idefics3")
    model, processor = adapter.build_tiny(seed=1)
    use_capture_attention(model)
    prompts = [visual_prompt(s, DataConfig(prompt={"mode": "answer_only"})) for s in generate_samples(GroundedVQAConfig(), "val", 2)]
    a = generate(adapter, model, processor, prompts, greedy=True, max_new_tokens=6)
    b = generate(adapter, model, processor, prompts, greedy=True, max_new_tokens=6)
    assert a.texts == b.texts and torch.equal(a.attention, b.attention)


def test_visual_placeholder_tokens_are_never_sampled():
    """A sampled <|image_pad|> would break the next forward (token count ≠ image features)."""
    adapter = get_adapter("qwen2_5_vl")
    model, processor = adapter.build_tiny(seed=0)
    banned = adapter.banned_token_ids(processor)
    with torch.no_grad():  # make the placeholders the most likely tokens by far
        model.lm_head.weight[banned] = model.lm_head.weight[banned] * 0 + 5.0
    use_capture_attention(model)
    prompts = [visual_prompt(s, DataConfig()) for s in generate_samples(GroundedVQAConfig(), "train", 2)]
    gen = generate(adapter, model, processor, prompts, num_samples=2, max_new_tokens=6, seed=0)
    assert not torch.isin(gen.response_ids, torch.tensor(banned)).any()


@pytest.mark.parametrize("family", ["qwen2_5_vl", "idefics3"])
def test_one_sampling_distribution_with_the_banned_tokens_in_play(family):
    """The rollout records, and the learner computes, the log-probs of the distribution the sampler draws from:
    the visual placeholders removed, then the temperature. Here those tokens carry a third of the mass, so a
    log-prob over the whole vocabulary would be off by ~0.4."""
    adapter = get_adapter(family)
    model, processor = adapter.build_tiny(seed=4)
    banned = adapter.banned_token_ids(processor)
    assert banned
    _bias_head(model, banned, 6.0)
    use_capture_attention(model)
    samples = generate_samples(GroundedVQAConfig.at_stage(4, fraction_video=0.5), "train", 2)
    gen = generate(adapter, model, processor, [visual_prompt(s, DataConfig()) for s in samples], num_samples=3,
                   max_new_tokens=8, temperature=0.8, capture=False, seed=0)
    assert not torch.isin(gen.response_ids[gen.response_mask.bool()], torch.tensor(banned)).any()  # never sampled
    pad = processor.tokenizer.pad_token_id
    args = (adapter, model, gen.prompts, gen.response_ids, gen.response_mask, pad)
    with torch.no_grad():
        learner = forward_responses(*args, temperature=0.8, banned=banned, capture=False).logprobs
        logits = forward_responses(*args, temperature=0.8, banned=banned, capture=False, keep_logits=True)
        whole = forward_responses(*args, temperature=0.8, banned=(), capture=False).logprobs
    assert (gen.logprobs - learner).abs().max() <= 1e-5
    assert (logits.logprobs - learner).abs().max() <= 1e-5  # the full-logits path (distillation) is the same
    assert logits.logits[..., banned].max() <= -1e8 and logits.logits.isfinite().all()
    gap = (whole - learner)[gen.response_mask.bool()]
    assert gap.max() < -0.1  # banned tokens in play: the whole vocabulary's log-probs are another distribution


def test_with_top_p_the_rollout_records_the_nucleus_it_sampled_from():
    adapter = get_adapter("qwen2_5_vl")
    model, processor = adapter.build_tiny(seed=5)
    use_capture_attention(model)
    samples = generate_samples(GroundedVQAConfig(), "train", 2)
    prompts = [visual_prompt(s, DataConfig()) for s in samples]
    gen = generate(adapter, model, processor, prompts, num_samples=2, max_new_tokens=6, temperature=1.0, top_p=0.3,
                   capture=False, seed=0)
    with torch.no_grad():
        whole = forward_responses(adapter, model, gen.prompts, gen.response_ids, gen.response_mask,
                                  processor.tokenizer.pad_token_id, banned=adapter.banned_token_ids(processor),
                                  capture=False).logprobs
    mask = gen.response_mask.bool()
    # renormalised over a nucleus of at least 0.3 of the mass: higher than the whole distribution's, by at most
    # log(1/0.3)
    diff = (gen.logprobs - whole)[mask]
    assert (diff > 1e-3).all() and (diff <= torch.log(torch.tensor(1 / 0.3)) + 1e-5).all()
