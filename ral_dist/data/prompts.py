"""The paper's answer format (``RAL.md`` §4): ``<think>…</think><answer>…</answer>``, or ``<answer>…</answer>`` only
for the RAL-zero variant. Texts are short: the tiny from-scratch models have a small context."""

from __future__ import annotations

from typing import Literal

from .sample import Sample

Mode = Literal["think", "answer_only"]
MODES: tuple[str, ...] = ("think", "answer_only")

SYSTEM_PROMPT = "Answer questions about the picture."

_INSTRUCTIONS = {
    "think": "Reason in <think></think>, then answer in <answer></answer>.",
    "answer_only": "Answer in <answer></answer>.",
}


def _check(mode: str) -> str:
    if mode not in _INSTRUCTIONS:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def format_instruction(mode: Mode = "think") -> str:
    return _INSTRUCTIONS[_check(mode)]


def user_text(sample: Sample, mode: Mode = "think") -> str:
    """The user turn's text: the question followed by the format instruction."""
    return f"{sample.question} {format_instruction(mode)}"


def target_text(sample: Sample, mode: Mode = "think") -> str:
    """The reference response: ``<think>{rationale}</think><answer>{answer}</answer>`` or ``<answer>…</answer>``."""
    if _check(mode) == "think":
        return f"<think>{sample.rationale}</think><answer>{sample.answer}</answer>"
    return f"<answer>{sample.answer}</answer>"


def chat_messages(sample: Sample, mode: Mode = "think", with_system: bool = True) -> list[dict]:
    """Chat-template messages (HF style): an image/video placeholder then the user text."""
    visual = {"type": "video"} if sample.kind == "video" else {"type": "image"}
    msgs: list[dict] = []
    if with_system:
        msgs.append({"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]})
    msgs.append({"role": "user", "content": [visual, {"type": "text", "text": user_text(sample, mode)}]})
    return msgs
