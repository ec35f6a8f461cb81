"""Capture of the attention policy of RAL.md §1 from the last decoder layer of the language model (or the layers of
``attention.layers``, averaged: `armed_layers`).

Every layer keeps SDPA. We register one attention function, ``ral_sdpa``, that is plain SDPA for every module
except the one module a capture is armed on (the last LM layer's ``self_attn``): there it also computes the
head-averaged probabilities for the requested query rows only — ``q_rows · K^T`` in chunks of rows, never the
full ``T x T`` of every layer — drops the diagonal and renormalises over the earlier, non-padding keys.

A `DecodeCapture` does the same across the passes of a cached ``generate``: the prompt pass's requested rows, then
each decoding pass's one new row, so a rollout gets its rows without a second forward.

Works with and without grad: under ``torch.no_grad`` (rollout, teacher) the result is a plain tensor; in the
learner the probabilities stay in the graph, so the RAL loss back-propagates through the last layer's q and k. A
`CaptureRequest` keeps the layer's q and k and computes the rows after the forward, outside the layer: with grad,
each chunk of rows is checkpointed (its q·K^T is recomputed in the backward instead of kept, so the backward holds
one chunk at a time), and a gradient-checkpointed layer, which runs its forward twice, saves the same tensors both
times.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "ral_sdpa"
RowAlignment = Literal["paper", "sampling"]
CAPTURE_CHUNK_ROWS = 64  # query rows whose q . K^T exist at once (and, with grad, are recomputed in the backward)


@dataclass
class CaptureRequest:
    """What to capture in one forward pass, and (after it) the result.

    rows:      [B, R] query positions (indices into the sequence); -1 marks a row to skip.
    key_mask:  [B, T] True for real (non-padding) keys.
    policy:    [B, R, T] fp32, after the forward; row b,r is p^t over keys j < t (zeros elsewhere and on
               skipped rows).
    """

    rows: torch.Tensor
    key_mask: torch.Tensor
    chunk_rows: int = CAPTURE_CHUNK_ROWS
    _qk: tuple | None = field(default=None, repr=False)  # the armed layer's (query, key, scaling), first call only
    _policy: torch.Tensor | None = field(default=None, repr=False)

    def record(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        if self._qk is None:  # a gradient-checkpointed layer's recompute calls again: keep the forward's
            self._qk = (query, key, scaling)

    @property
    def policy(self) -> torch.Tensor | None:
        if self._policy is None and self._qk is not None:
            query, key, scaling = self._qk
            if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad):
                parts = [checkpoint(rows_attention_policy, query, key, self.rows[:, s : s + self.chunk_rows],
                                    self.key_mask, scaling, self.chunk_rows, use_reentrant=False)
                         for s in range(0, self.rows.shape[1], self.chunk_rows)]
                self._policy = torch.cat(parts, dim=1)
            else:
                self._policy = rows_attention_policy(query, key, self.rows, self.key_mask, scaling, self.chunk_rows)
            self._qk = None
        return self._policy


@dataclass
class DecodeCapture:
    """Capture across the forwards of a cached generation (prompt pass, then one new token per pass).

    prompt_rows: [B, Q] positions in the prompt whose rows the prompt pass keeps (-1 = skip).
    key_mask:    [B, P] True for the prompt's real keys; every generated position is a real key (as generation
                 feeds them), and no kept row ever attends past its own end of response.
    prompt_policy: [B, Q, P] after the prompt pass.
    steps:       per later pass, [B, 1, P + k + 1]: the row of the token that pass fed.
    prompt_copies: > 1 when the prompt pass ran once per distinct prompt for its consecutive copies, over all but
                 the last prompt token (`prompt_sharing.prefill_shared`): the prompt rows are then repeated, and the
                 first later pass feeds the last prompt token (``prompt_policy`` is [B, Q, P - 1]; no row of it may
                 be the last prompt position).
    """

    prompt_rows: torch.Tensor
    key_mask: torch.Tensor
    chunk_rows: int = 64
    prompt_copies: int = 1
    prompt_policy: torch.Tensor | None = None
    steps: list[torch.Tensor] = field(default_factory=list)

    def record(self, query: torch.Tensor, key: torch.Tensor, scaling: float) -> None:
        seq = key.shape[2]
        if self.prompt_policy is None:
            c = self.prompt_copies
            policy = rows_attention_policy(query, key, self.prompt_rows[::c], self.key_mask[::c, :seq], scaling,
                                           self.chunk_rows)
            self.prompt_policy = policy.repeat_interleave(c, 0) if c > 1 else policy
            return
        if query.shape[2] != 1:
            raise RuntimeError(f"a decode capture expects one new token per pass, got {query.shape[2]}")
        grown = self.key_mask.new_ones(self.key_mask.shape[0], seq - self.key_mask.shape[1])
        last = torch.full((query.shape[0], 1), seq - 1, dtype=torch.long, device=query.device)
        self.steps.append(rows_attention_policy(query, key, last, torch.cat([self.key_mask, grown], 1), scaling))


def _ral_sdpa(module: nn.Module, query, key, value, attention_mask, **kwargs):
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    request = module.__dict__.get("_ral_capture")
    if request is not None:
        scaling = kwargs.get("scaling") or module.scaling
        request.record(query, key, scaling)
    return out, None


AttentionInterface.register(ATTN_IMPLEMENTATION, _ral_sdpa)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def rows_attention_policy(query: torch.Tensor, key: torch.Tensor, rows: torch.Tensor, key_mask: torch.Tensor,
                          scaling: float, chunk_rows: int = 64) -> torch.Tensor:
    """Head-averaged attention probabilities of selected query rows, diagonal dropped and renormalised.

    query [B, H, Tq, d] and key [B, Hkv, T, d] are post-RoPE (GQA: H = Hkv * G, no K repeat is materialised); the
    queries are the last Tq of the T positions (Tq = T in a full forward, 1 in a cached decoding pass), ``rows``
    index the T positions. Returns [B, R, T] fp32.
    """
    bsz, n_heads, n_queries, dim = query.shape
    n_kv, seq = key.shape[1], key.shape[2]
    groups = n_heads // n_kv
    valid_row = rows >= 0
    safe_rows = rows.clamp(min=0)
    first_query = seq - n_queries  # a decode step's queries are the last positions of the cached keys
    key_t = key.float().transpose(-1, -2)  # [B, Hkv, d, T]
    positions = torch.arange(seq, device=query.device)
    out = []
    for start in range(0, rows.shape[1], chunk_rows):
        r = safe_rows[:, start : start + chunk_rows]  # [B, r]
        local = (r - first_query).clamp(min=0)
        q = query.gather(2, local[:, None, :, None].expand(bsz, n_heads, r.shape[1], dim)).float()
        q = q.view(bsz, n_kv, groups * r.shape[1], dim)
        scores = (q @ key_t * scaling).view(bsz, n_kv, groups, r.shape[1], seq)
        causal = positions[None, None, :] <= r[:, :, None]  # [B, r, T], self included (softmax as the model)
        allowed = causal & key_mask[:, None, :].bool()
        scores = scores.masked_fill(~allowed[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).mean(dim=(1, 2))  # [B, r, T]
        earlier = (positions[None, None, :] < r[:, :, None]) & allowed
        probs = probs * earlier
        total = probs.sum(-1, keepdim=True)
        probs = torch.where(total > 0, probs / total.clamp_min(1e-30), torch.zeros_like(probs))
        out.append(probs * valid_row[:, start : start + chunk_rows, None])
    return torch.cat(out, dim=1) if out else query.new_zeros(bsz, 0, seq, dtype=torch.float32)


def use_capture_attention(model: nn.Module) -> nn.Module:
    """Switch a model to ``ral_sdpa`` (SDPA everywhere; capture where armed)."""
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


@contextmanager
def capture_attention(attn_module: nn.Module, rows: torch.Tensor, key_mask: torch.Tensor,
                      chunk_rows: int = 64) -> Iterator[CaptureRequest]:
    """Arm the capture of ``rows`` on one attention module for the forward passes inside the block."""
    with armed(attn_module, CaptureRequest(rows=rows, key_mask=key_mask, chunk_rows=chunk_rows)) as request:
        yield request


@contextmanager
def armed(attn_module: nn.Module, request: CaptureRequest | DecodeCapture) -> Iterator[CaptureRequest | DecodeCapture]:
    """Arm a capture request on one attention module for the forward passes inside the block."""
    if not hasattr(attn_module, "scaling"):
        raise TypeError(f"{type(attn_module).__name__} is not a transformers attention module")
    attn_module._ral_capture = request
    try:
        yield request
    finally:
        del attn_module._ral_capture


def layer_indices(layers: Sequence[int], n_layers: int) -> list[int]:
    """``attention.layers`` (negative: from the last) as indices 0..n_layers-1, in order, each once."""
    out = []
    for layer in layers:
        if not -n_layers <= layer < n_layers:
            raise ValueError(f"attention.layers: {layer} is not a layer of a language model with {n_layers} layers "
                             f"(0..{n_layers - 1}, or -1..-{n_layers} from the last)")
        if layer % n_layers not in out:
            out.append(layer % n_layers)
    return out


@dataclass
class LayerMean:
    """The attention policy of several layers (``attention.layers``): one request armed per layer, each row the
    mean of the layers' rows (a mean of distributions: still one). Reads like the request it averages."""

    requests: list

    @property
    def policy(self) -> torch.Tensor | None:
        return _mean([r.policy for r in self.requests])

    @property
    def prompt_policy(self) -> torch.Tensor | None:
        return _mean([r.prompt_policy for r in self.requests])

    @property
    def steps(self) -> list[torch.Tensor]:
        return [_mean(list(rows)) for rows in zip(*(r.steps for r in self.requests), strict=True)]

    @property
    def key_mask(self) -> torch.Tensor:
        return self.requests[0].key_mask

    @property
    def prompt_copies(self) -> int:
        return self.requests[0].prompt_copies


def _mean(parts: list) -> torch.Tensor | None:
    if parts[0] is None:
        return None
    # layers dispatched over several GPUs (a large teacher): their rows meet on the first one's device
    return parts[0] if len(parts) == 1 else torch.stack([p.to(parts[0].device) for p in parts]).mean(0)


@contextmanager
def armed_layers(layer_modules: list[nn.Module], make_request) -> Iterator[LayerMean]:
    """Arm ``make_request()`` on each of ``layer_modules``' attention for the forward passes inside the block; the
    capture costs one ``q · K^T`` per layer and row."""
    with contextlib.ExitStack() as stack:
        yield LayerMean([stack.enter_context(armed(m.self_attn, make_request())) for m in layer_modules])


def response_rows(prompt_len: int, response_mask: torch.Tensor, alignment: RowAlignment = "paper") -> torch.Tensor:
    """Query rows for the response tokens of left-padded prompts followed by right-padded responses.

    ``paper``: the rows of the generated tokens themselves (positions P+1..T in RAL.md's 1-based notation);
    ``sampling``: one earlier (P..T-1), the rows whose logits sampled each token. Masked tokens give -1.
    """
    n = response_mask.shape[1]
    base = prompt_len if alignment == "paper" else prompt_len - 1
    rows = base + torch.arange(n, device=response_mask.device).expand_as(response_mask)
    return torch.where(response_mask.bool(), rows, torch.full_like(rows, -1))


def reference_attention_policy(eager_attentions: torch.Tensor, rows: torch.Tensor,
                               key_mask: torch.Tensor) -> torch.Tensor:
    """The slow reference: from a full [B, H, T, T] eager attention (``output_attentions=True``), the same rows.

    Used by tests and the benchmark only; never on a training path.
    """
    avg = eager_attentions.float().mean(1)  # [B, T, T]
    seq = avg.shape[-1]
    safe = rows.clamp(min=0)
    picked = avg.gather(1, safe[:, :, None].expand(-1, -1, seq))
    earlier = (torch.arange(seq)[None, None, :] < safe[:, :, None]) & key_mask[:, None, :].bool()
    picked = picked * earlier
    total = picked.sum(-1, keepdim=True)
    picked = torch.where(total > 0, picked / total.clamp_min(1e-30), torch.zeros_like(picked))
    return picked * (rows >= 0)[:, :, None]
