"""Prompt texts: the user turn (:func:`user_text`, a Jinja template), the question span, the SFT target.

The paper's answer format (``RAL.md`` §4) is ``<think>…</think><answer>…</answer>`` (``mode: think``), or
``<answer>…</answer>`` only for the RAL-zero variant (``mode: answer_only``). Two presets:

- ``ral`` (default): ``"{question} {instruction}"`` with the options, when a sample has some, on lines after the
  question; texts stay short (the tiny from-scratch models have a small context). For a sample without options it
  is exactly the text of before issue 18.
- ``video_r1``: Video-R1's own training prompt (``src/r1-v/src/open_r1/grpo.py``): options appended to a multiple-
  choice problem as ``"Options:\\n"`` and one per line, its think instruction, and its per-problem-type suffix; no
  system turn (the chat template's default applies).

``template`` and ``type_suffix`` override the preset's. Template variables: ``question``, ``options`` (list),
``problem_type``, ``instruction`` (the mode's instruction) and ``mode``; templates run in Jinja's sandbox with
undefined names an error. The suffix of the sample's ``problem_type`` is appended to the rendered text.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sample import PROBLEM_TYPES, Sample

Mode = Literal["think", "answer_only"]
MODES: tuple[str, ...] = ("think", "answer_only")

SYSTEM_PROMPT = "Answer questions about the picture."

_INSTRUCTIONS = {
    "think": "Reason in <think></think>, then answer in <answer></answer>.",
    "answer_only": "Answer in <answer></answer>.",
}

_RAL_TEMPLATE = "{{ question }}{% if options %}\n{{ options | join('\n') }}{% endif %} {{ instruction }}"

# Video-R1's QUESTION_TEMPLATE and TYPE_TEMPLATE, reworded only where answer_only needs no thinking
_VIDEO_R1_THINK = (
    "Please think about this question as if you were a human pondering deeply. Engage in an internal dialogue "
    "using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it down', etc, or other "
    "natural language thought expressions It's encouraged to include self-reflection or verification in the "
    "reasoning process. Provide your detailed reasoning between the <think> </think> tags, and then give your "
    "final answer between the <answer> </answer> tags.")
_VIDEO_R1_ANSWER_ONLY = "Give your final answer between the <answer> </answer> tags."
_VIDEO_R1_TEMPLATE = (
    "{{ question }}{% if problem_type == 'multiple choice' %}Options:\n{% for o in options %}{{ o }}\n{% endfor %}"
    "{% endif %}\n{{ instruction }}")
_VIDEO_R1_SUFFIX = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
                       "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
           "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}

PRESETS: dict[str, dict] = {
    "ral": {"template": _RAL_TEMPLATE, "type_suffix": {}, "system": SYSTEM_PROMPT, "instructions": _INSTRUCTIONS},
    "video_r1": {"template": _VIDEO_R1_TEMPLATE, "type_suffix": _VIDEO_R1_SUFFIX, "system": None,
                 "instructions": {"think": _VIDEO_R1_THINK, "answer_only": _VIDEO_R1_ANSWER_ONLY}},
}

_env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


@lru_cache(maxsize=32)
def _compiled(source: str):
    return _env.from_string(source)


class PromptConfig(BaseModel):
    """``data.prompt``: how a sample becomes the user turn."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = Field("think", description="think: <think>…</think><answer>…</answer>; answer_only: RAL-zero")
    preset: Literal["ral", "video_r1"] = Field("ral", description="ral: '{question} {instruction}' (ours); "
                                                                  "video_r1: Video-R1's training prompt")
    template: str | None = Field(None, description="Jinja source overriding the preset's; variables question, "
                                                   "options, problem_type, instruction, mode")
    type_suffix: dict[str, str] | None = Field(None, description="problem_type → text appended to the rendered "
                                                                 "template, overriding the preset's")

    @field_validator("template")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                _compiled(v)
            except TemplateSyntaxError as e:
                raise ValueError(f"template does not compile: {e}") from None
        return v

    @field_validator("type_suffix")
    @classmethod
    def _known_types(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        unknown = sorted(set(v or {}) - set(PROBLEM_TYPES))
        if unknown:
            raise ValueError(f"unknown problem types {unknown}; known: {list(PROBLEM_TYPES)}")
        return v

    @property
    def system(self) -> str | None:
        """The system turn of the preset (None: none, the chat template's default applies)."""
        return PRESETS[self.preset]["system"]

    @property
    def instruction(self) -> str:
        return PRESETS[self.preset]["instructions"][self.mode]


def _check(mode: str) -> str:
    if mode not in _INSTRUCTIONS:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _config(prompt: PromptConfig | str) -> PromptConfig:
    return prompt if isinstance(prompt, PromptConfig) else PromptConfig(mode=_check(prompt))


def format_instruction(mode: Mode = "think") -> str:
    """The ``ral`` preset's answer-format instruction of ``mode``."""
    return _INSTRUCTIONS[_check(mode)]


def user_text(sample: Sample, prompt: PromptConfig | Mode = "think") -> str:
    """The whole user turn's text (``prompt``: a :class:`PromptConfig`, or a mode for the default preset)."""
    cfg = _config(prompt)
    preset = PRESETS[cfg.preset]
    source = cfg.template if cfg.template is not None else preset["template"]
    suffixes = cfg.type_suffix if cfg.type_suffix is not None else preset["type_suffix"]
    text = _compiled(source).render(question=sample.question, options=list(sample.options),
                                    problem_type=sample.problem_type, instruction=cfg.instruction, mode=cfg.mode)
    return text + suffixes.get(sample.problem_type, "")


def question_span(sample: Sample) -> str:
    """The text whose tokens are the question's (RAL.md §4, consistency): the problem text alone."""
    return sample.question


def question_offsets(text: str, sample: Sample) -> tuple[int, int]:
    """Character span of :func:`question_span` in a rendered user ``text``; ``ValueError`` when the template left it
    out."""
    start = text.find(sample.question)
    if not sample.question or start < 0:
        raise ValueError(f"sample {sample.id}: the user text does not contain the question")
    return start, start + len(sample.question)


def target_text(sample: Sample, mode: Mode = "think") -> str:
    """The reference response: ``<think>{rationale}</think><answer>{answer}</answer>`` or ``<answer>…</answer>``."""
    if _check(mode) == "think":
        return f"<think>{sample.rationale}</think><answer>{sample.answer}</answer>"
    return f"<answer>{sample.answer}</answer>"


def chat_messages(sample: Sample, prompt: PromptConfig | Mode = "think", with_system: bool = True) -> list[dict]:
    """Chat-template messages (HF style): the preset's system turn, then an image/video placeholder and the user
    text."""
    cfg = _config(prompt)
    visual = {"type": "video"} if sample.kind == "video" else {"type": "image"}
    msgs: list[dict] = []
    if with_system and cfg.system is not None:
        msgs.append({"role": "system", "content": [{"type": "text", "text": cfg.system}]})
    msgs.append({"role": "user", "content": [visual, {"type": "text", "text": user_text(sample, cfg)}]})
    return msgs
