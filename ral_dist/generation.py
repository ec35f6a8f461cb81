"""Generate responses for visual prompts and score them with the weights that sampled them.

One post-generation forward over prompt + response gives, for every response token, its log-prob (logits
divided by the sampling temperature, as the learner computes them) and — when asked — the attention policy rows
of RAL.md §1 from the last LM layer. The same function serves the rollout worker (sampling, G per prompt) and
evaluation (greedy).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ral_dist.models import PromptBatch, VisualPrompt, VLMAdapter, append_response
from ral_dist.models.capture import RowAlignment, capture_attention, response_rows


@dataclass
class Generation:
    prompts: PromptBatch
    response_ids: torch.Tensor  # [N, R] right-padded
    response_mask: torch.Tensor  # [N, R] 1 up to and including the first EOS
    logprobs: torch.Tensor  # [N, R] log-prob of each response token (0 where masked)
    texts: list[str]
    attention: torch.Tensor | None = None  # [N, R, T] policy rows of the response tokens
    question_attention: torch.Tensor | None = None  # [N, Q, T] rows of the question tokens (for consistency)
    question_rows: torch.Tensor | None = None  # [N, Q] positions of those rows (-1 = none)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of "generation" and "attention_capture"


def eos_mask(ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 for tokens up to and including the first EOS of each row, 0 after it."""
    is_eos = torch.isin(ids, torch.tensor(eos_ids, device=ids.device))
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    return (~after).long()


def pad_positions(positions: list[torch.Tensor]) -> torch.Tensor:
    width = max([len(p) for p in positions] + [1])
    out = torch.full((len(positions), width), -1, dtype=torch.long)
    for b, p in enumerate(positions):
        out[b, : len(p)] = p
    return out


def score_responses(adapter: VLMAdapter, model, prompts: PromptBatch, response_ids: torch.Tensor,
                    response_mask: torch.Tensor, pad_token_id: int, temperature: float = 1.0,
                    capture: bool = True, capture_question: bool = False, alignment: RowAlignment = "paper",
                    chunk_rows: int = 64):
    """One forward over prompt + response: per-token log-probs and (optionally) the attention policy rows.

    Runs with whatever grad mode the caller set (no grad in rollouts, with grad in the learner). Returns
    (logprobs [N, R], attention [N, R, T] or None, question_attention [N, Q, T] or None, question_rows).
    """
    inputs = append_response(prompts.inputs, response_ids, response_mask, pad_token_id)
    P = prompts.prompt_len
    rows = response_rows(P, response_mask, alignment) if capture else None
    q_rows = pad_positions(prompts.question_positions) if capture_question else None
    if capture and capture_question:
        rows = torch.cat([rows, q_rows], dim=1)
    attn_module = adapter.language_layers(model)[-1].self_attn
    if rows is not None:
        with capture_attention(attn_module, rows, inputs["attention_mask"], chunk_rows) as request:
            logits = model(**inputs).logits
        policy = request.policy
    else:
        logits, policy = model(**inputs).logits, None
    # logits at position P-1+i predict response token i
    resp_logits = logits[:, P - 1 : P - 1 + response_ids.shape[1]].float() / temperature
    logprobs = torch.log_softmax(resp_logits, -1).gather(-1, response_ids[..., None]).squeeze(-1)
    logprobs = logprobs * response_mask
    n_resp = response_ids.shape[1]
    attention = policy[:, :n_resp] if policy is not None else None
    question_attention = policy[:, n_resp:] if (policy is not None and capture_question) else None
    return logprobs, attention, question_attention, q_rows


@torch.no_grad()
def generate(adapter: VLMAdapter, model, processor, prompts: list[VisualPrompt], *, num_samples: int = 1,
             max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             capture: bool = True, capture_question: bool = False, alignment: RowAlignment = "paper",
             seed: int | None = None) -> Generation:
    """Sample ``num_samples`` responses per prompt (rows ordered prompt-major: p0 x G, p1 x G, ...)."""
    expanded = [p for p in prompts for _ in range(num_samples)]
    batch = adapter.encode(processor, expanded)
    tok = processor.tokenizer
    eos = adapter.eos_token_ids(processor)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    t0 = time.perf_counter()
    out = model.generate(**batch.inputs, max_new_tokens=max_new_tokens, eos_token_id=eos,
                         pad_token_id=tok.pad_token_id, do_sample=not greedy,
                         suppress_tokens=adapter.banned_token_ids(processor), **sampling)
    t1 = time.perf_counter()
    response_ids = out[:, batch.prompt_len:]
    if response_ids.shape[1] == 0:
        response_ids = torch.full((len(expanded), 1), tok.pad_token_id, dtype=torch.long)
    response_mask = eos_mask(response_ids, eos)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, tok.pad_token_id))
    logprobs, attention, q_attention, q_rows = score_responses(
        adapter, model, batch, response_ids, response_mask, tok.pad_token_id,
        temperature=1.0 if greedy else temperature, capture=capture, capture_question=capture_question,
        alignment=alignment)
    texts = tok.batch_decode(response_ids * response_mask + tok.pad_token_id * (1 - response_mask),
                             skip_special_tokens=True)
    seconds = {"generation": t1 - t0, "attention_capture": time.perf_counter() - t1}
    return Generation(batch, response_ids, response_mask, logprobs, texts, attention, q_attention, q_rows, seconds)
