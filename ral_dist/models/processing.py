"""Shared steps of the processors: chat text → token ids with offsets, question positions, left padding."""

from __future__ import annotations

import torch


def tokenize_with_question(tokenizer, text: str, question: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and the indices of the tokens overlapping the last occurrence of ``question``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    start = text.rfind(question) if question else -1
    if start < 0:
        return enc["input_ids"], []
    end = start + len(question)
    positions = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start and e > s]
    return enc["input_ids"], positions


def left_pad(sequences: list[list[int]], pad_value: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Stack ragged id lists left-padded; returns ids, attention mask and each row's pad length."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    offsets = []
    for b, seq in enumerate(sequences):
        off = width - len(seq)
        ids[b, off:] = torch.tensor(seq, dtype=torch.long)
        mask[b, off:] = 1
        offsets.append(off)
    return ids, mask, offsets
