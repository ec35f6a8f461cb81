"""Which response tokens hold the answer: the rows whose attention the answer-level metrics average."""

from __future__ import annotations

import re

import torch

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def answer_token_mask(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[R] bool: tokens overlapping the content of the last ``<answer>…</answer>``; the whole response if none.

    Works for any tokenizer: character spans come from decoding growing prefixes of the response.
    """
    n = int(mask.sum())
    tokens = ids[:n].tolist()
    ends = [len(tokenizer.decode(tokens[: i + 1])) for i in range(n)]
    text = tokenizer.decode(tokens)
    out = torch.zeros(ids.shape[0], dtype=torch.bool)
    matches = list(_ANSWER.finditer(text))
    if not matches:
        out[:n] = True
        return out
    start, end = matches[-1].span(1)
    if start == end:  # empty answer: use the closing tag's token, the moment the answer was committed
        start, end = matches[-1].end(1), matches[-1].end(1) + 1
    prev = 0
    for i, e in enumerate(ends):
        if prev < end and e > start:
            out[i] = True
        prev = e
    return out
