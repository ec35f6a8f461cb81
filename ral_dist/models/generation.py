"""Responses of a policy with the log-probs and attention rows of its weights: sampled, or given.

`generate` (rollout worker: sampling, G per prompt; evaluation: greedy) takes both from the sampling passes
themselves. `forward_responses` is one forward over prompt + given responses that gives the same numbers: the
learner's current policy, the reference, the teacher, and the replica beside a vLLM engine. Log-probs are of one
token distribution everywhere (`token_log_softmax`: the banned visual placeholders removed, then the sampling
temperature), the one the sampler draws from; the rows are the attention policy of RAL.md §1 from the last LM layer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList, TopPLogitsWarper

from ral_dist.models.base import PromptBatch, VisualPrompt, VLMAdapter, append_response
from ral_dist.models.capture import (
    CAPTURE_CHUNK_ROWS,
    CaptureRequest,
    DecodeCapture,
    LayerMean,
    RowAlignment,
    armed_layers,
    layer_indices,
    response_rows,
)
from ral_dist.models.prompt_sharing import SharedPrompts, prefill_shared, shared_prompt_forward

LOGPROB_CHUNK = 1024  # response positions whose fp32 vocabulary logits exist at once in the learner
# A banned token's logit: probability exactly 0 in fp32 yet finite, so that p * log p terms of a distillation loss
# stay 0 (vLLM's logit bias of -100 gives the same log-probs to far below 1e-5).
MASKED_LOGIT = -1e9


def mask_banned(logits: torch.Tensor, banned: Sequence[int]) -> torch.Tensor:
    """fp32 logits with the ``banned`` tokens (visual placeholders only the processor may place) removed."""
    x = logits.float()
    if banned:
        x = x.index_fill(-1, torch.tensor(list(banned), device=x.device), MASKED_LOGIT)
    return x


def token_log_softmax(logits: torch.Tensor, temperature: float = 1.0, banned: Sequence[int] = ()) -> torch.Tensor:
    """Log-probs over the vocabulary of the sampling distribution: banned tokens removed, then the temperature.
    The rollout records, and the learner, the reference and the teacher compute, these (top-p aside: see
    `generate`)."""
    return torch.log_softmax(mask_banned(logits, banned) / temperature, -1)


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


@dataclass
class ResponseForward:
    """What one forward over prompt + given responses computes (`forward_responses`); T = P + R."""

    logprobs: torch.Tensor  # [N, R] log-prob of each response token (`token_log_softmax`; 0 where masked)
    attention: torch.Tensor | None = None  # [N, R, T] attention policy rows of the response tokens
    question_attention: torch.Tensor | None = None  # [N, Q, T] rows of the question tokens
    question_rows: torch.Tensor | None = None  # [N, Q] positions of those rows (-1 = none)
    logits: torch.Tensor | None = None  # [N, R, V] fp32 logits that predict the response, banned tokens masked,
    # before the temperature


class _LastHiddenState:
    """Keeps the language model's final hidden states of the next forward (a hook on the backbone, so the call
    still goes through the model, or the DeepSpeed engine that wraps it)."""

    def __init__(self, model):
        self.backbone, self.hidden = getattr(model, "module", model).model, None

    def __enter__(self) -> _LastHiddenState:
        self._handle = self.backbone.register_forward_hook(
            lambda _m, _i, out: setattr(self, "hidden", out.last_hidden_state))
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _token_logprobs(lm_head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float,
                    banned: Sequence[int]) -> torch.Tensor:
    return token_log_softmax(lm_head(hidden), temperature, banned).gather(-1, ids[:, None]).squeeze(-1)


def response_logprobs(lm_head: nn.Module, hidden: torch.Tensor, ids: torch.Tensor, temperature: float,
                      banned: Sequence[int] = (), chunk: int = LOGPROB_CHUNK) -> torch.Tensor:
    """[N, R] log-probs of ``ids`` from the hidden states [N, R, H] that predict them, ``chunk`` positions at a
    time: with grad each chunk is checkpointed (its fp32 logits are recomputed in the backward), so full-vocabulary
    logits of the whole batch never exist at once."""
    flat_h, flat_ids = hidden.reshape(-1, hidden.shape[-1]), ids.reshape(-1)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = [checkpoint(_token_logprobs, lm_head, flat_h[s : s + chunk], flat_ids[s : s + chunk], temperature,
                        banned, use_reentrant=False) if grad else
             _token_logprobs(lm_head, flat_h[s : s + chunk], flat_ids[s : s + chunk], temperature, banned)
             for s in range(0, flat_ids.shape[0], chunk)]
    return torch.cat(parts).view_as(ids)


def capture_layers(adapter: VLMAdapter, model, layers: Sequence[int]) -> list[nn.Module]:
    """The decoder layers of ``attention.layers`` whose attention policy is captured (default: the last)."""
    all_layers = adapter.language_layers(model)
    return [all_layers[i] for i in layer_indices(layers, len(all_layers))]


def forward_responses(adapter: VLMAdapter, model, prompts: PromptBatch, response_ids: torch.Tensor,
                      response_mask: torch.Tensor, pad_token_id: int, temperature: float = 1.0, *,
                      banned: Sequence[int], capture: bool = True, capture_question: bool = False, alignment: RowAlignment = "paper",
                      keep_logits: bool = False, chunk_rows: int = CAPTURE_CHUNK_ROWS,
                      layers: Sequence[int] = (-1,), shared: SharedPrompts | None = None) -> ResponseForward:
    """One forward over prompt + response: per-token log-probs (`token_log_softmax` with ``temperature`` and
    ``banned``: the adapter's `banned_token_ids`, required so that no caller scores another distribution) and
    (optionally) the attention policy rows and the response logits. Runs with whatever grad mode the caller set (no
    grad in rollouts, with grad in the learner). The vocabulary projection runs on the response positions only (no
    prompt logits). ``shared``: the batch's distinct prompts, each run once (`shared_prompt_forward`; not with
    ``capture_question``, whose rows lie before the shared pass's queries)."""
    inputs = append_response(prompts.inputs, response_ids, response_mask, pad_token_id)
    P, R = prompts.prompt_len, response_ids.shape[1]
    rows = response_rows(P, response_mask, alignment) if capture else None
    q_rows = pad_positions(prompts.question_positions).to(response_ids.device) if capture_question else None
    if capture and capture_question:
        rows = torch.cat([rows, q_rows], dim=1)
    capture_rows = (armed_layers(capture_layers(adapter, model, layers),
                                 lambda: CaptureRequest(rows, inputs["attention_mask"], chunk_rows))
                    if rows is not None else contextlib.nullcontext())
    if shared is not None and not capture_question:
        with _LastHiddenState(model) as kept:
            request = shared_prompt_forward(adapter, model, inputs, shared, P, capture_rows)
        hidden = kept.hidden[:, :R]  # the second pass starts at position P - 1
    else:
        with capture_rows as request, _LastHiddenState(model) as kept:
            model(**inputs, use_cache=False, logits_to_keep=1)  # the one logit row: its cost, not the sequence's
        # the hidden state at position P-1+i predicts response token i
        hidden = kept.hidden[:, P - 1 : P - 1 + R]
    lm_head = getattr(model, "module", model).get_output_embeddings()
    logits = mask_banned(lm_head(hidden), banned) if keep_logits else None
    if logits is not None:
        logprobs = torch.log_softmax(logits / temperature, -1).gather(-1, response_ids[..., None]).squeeze(-1)
    else:
        logprobs = response_logprobs(lm_head, hidden, response_ids, temperature, banned)
    logprobs = logprobs * response_mask
    policy = request.policy if request is not None else None
    attention = policy[:, :R] if policy is not None else None
    question_attention = policy[:, R:] if (policy is not None and capture_question) else None
    return ResponseForward(logprobs, attention, question_attention, q_rows, logits)


class _FirstEosFed(StoppingCriteria):
    """A row is done once its first EOS has gone back through the model (the pass that computes that token's
    attention row), not when it is sampled; ``max_new_tokens + 1`` does the same for rows that never stop."""

    def __init__(self, prompt_len: int, eos_ids: list[int]):
        self.prompt_len, self.eos_ids = prompt_len, torch.tensor(eos_ids)

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.isin(input_ids[:, self.prompt_len : -1], self.eos_ids.to(input_ids.device)).any(1)


def decoded_rows(request: LayerMean, n_resp: int, alignment: RowAlignment) -> torch.Tensor:
    """[B, n_resp, P + n_resp] policy rows of the response tokens from a decode capture (zeros where never fed)."""
    seq = request.key_mask.shape[1] + n_resp
    steps = [s[:, 0] for s in request.steps]
    # the prompt's last row: of the prompt pass, or of the first later pass where that pass left the last token out
    last, steps = (steps[0], steps[1:]) if request.prompt_copies > 1 else (request.prompt_policy[:, -1], steps)
    if alignment == "sampling":  # token i was sampled from row P - 1 + i: the prompt's last row, then the steps
        steps = [last, *steps]
    out = request.prompt_policy.new_zeros(request.key_mask.shape[0], n_resp, seq)
    for i, row in enumerate(steps[:n_resp]):
        out[:, i, : row.shape[-1]] = row
    return out


def _sampled_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float, top_p: float,
                      banned: Sequence[int]) -> torch.Tensor:
    """[N] log-probs of the sampled ``ids`` under the distribution the sampler drew them from."""
    x = mask_banned(logits, banned) / temperature
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(None, x)
    return torch.log_softmax(x, -1).gather(-1, ids[:, None])[:, 0]


@torch.no_grad()
def generate(adapter: VLMAdapter, model, processor, prompts: list[VisualPrompt], *, num_samples: int = 1,
             max_new_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
             capture: bool = True, capture_question: bool = False, alignment: RowAlignment = "paper",
             seed: int | None = None, layers: Sequence[int] = (-1,), share_prompts: bool = True) -> Generation:
    """Sample ``num_samples`` responses per prompt (rows ordered prompt-major: p0 x G, p1 x G, ...); with
    ``share_prompts`` each prompt's prefill runs once for its G samples (`prompt_sharing.prefill_shared`).

    Log-probs and attention rows come from the sampling passes themselves (no second forward): the log-probs of
    the distribution each token was drawn from (`token_log_softmax` of the step's raw logits: banned tokens removed,
    the temperature; with ``top_p`` < 1 also the nucleus, renormalised: the behaviour policy's own log-probs, which
    the learner's full distribution then differs from by the nucleus mass, see learner.old_policy) and the last
    layer's rows captured as each token is fed back. Equal to `forward_responses` on the result up to float
    rounding when top_p is 1 (tests/test_generation.py).
    """
    expanded = [p for p in prompts for _ in range(num_samples)]
    batch = adapter.encode(processor, expanded)
    tok = processor.tokenizer
    eos = adapter.eos_token_ids(processor)
    P = batch.prompt_len
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p, "top_k": 0}
    # Prompt rows: the question's (consistency reward) and the last one (row of the first token, "sampling").
    q_rows = pad_positions(batch.question_positions) if capture_question else None
    last = torch.full((len(expanded), 1), P - 1, dtype=torch.long)
    device = model.device  # the inputs and the capture live where the model runs; the result comes back to the CPU
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.inputs.items()}
    copies = num_samples if share_prompts and num_samples > 1 else 1
    if copies > 1:  # the prompt's last row comes from the first decoding pass, which feeds the last prompt token
        last = last[:, :0]
    capture_rows = (last if q_rows is None else torch.cat([q_rows, last], 1)).to(device)
    # eos_token_id=[]: none of transformers' own EOS stopping, which ends a row before its EOS is fed back (see
    # _FirstEosFed); None would take the model's default.
    banned = adapter.banned_token_ids(processor)
    config = GenerationConfig(eos_token_id=[], pad_token_id=tok.pad_token_id, do_sample=not greedy,
                              max_new_tokens=max_new_tokens + int(capture), suppress_tokens=banned,
                              return_dict_in_generate=True, output_logits=True, **sampling)
    t0 = time.perf_counter()
    decode = (armed_layers(capture_layers(adapter, model, layers),
                           lambda: DecodeCapture(capture_rows, inputs["attention_mask"].bool(), prompt_copies=copies))
              if capture else contextlib.nullcontext())
    with decode as request:
        if copies > 1:
            unique = adapter.encode(processor, prompts).inputs
            cache, positions = prefill_shared(model, {k: v.to(device) if torch.is_tensor(v) else v
                                                      for k, v in unique.items()}, inputs, copies)
            inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
                      "position_ids": positions, "past_key_values": cache}
        out = model.generate(**inputs, generation_config=config,
                             stopping_criteria=StoppingCriteriaList([_FirstEosFed(P, eos)]))
    t1 = time.perf_counter()
    response_ids = out.sequences[:, P : P + max_new_tokens].cpu()
    if response_ids.shape[1] == 0:
        response_ids = torch.full((len(expanded), 1), tok.pad_token_id, dtype=torch.long)
    n_resp = response_ids.shape[1]
    response_mask = eos_mask(response_ids, eos)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, tok.pad_token_id))
    logprobs = torch.stack([_sampled_logprobs(step, response_ids[:, i].to(device), 1.0 if greedy else temperature,
                                              1.0 if greedy else top_p, banned).cpu()
                            for i, step in enumerate(out.logits[:n_resp])], 1) * response_mask
    attention = q_attention = None
    if capture:
        attention = decoded_rows(request, n_resp, alignment).cpu() * response_mask[..., None]
        if capture_question:
            q_policy = request.prompt_policy[:, : q_rows.shape[1]].cpu()  # keys: the prompt (but its last token)
            q_attention = torch.nn.functional.pad(q_policy, (0, P + n_resp - q_policy.shape[-1]))
    texts = tok.batch_decode(response_ids * response_mask + tok.pad_token_id * (1 - response_mask),
                             skip_special_tokens=True)
    seconds = {"generation": t1 - t0, "attention_capture": time.perf_counter() - t1}
    return Generation(batch, response_ids, response_mask, logprobs, texts, attention, q_attention, q_rows, seconds)
