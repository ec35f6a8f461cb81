"""Prompt templates: the default reproduces the text of before issue 18 for the synthetic samples, the video_r1
preset Video-R1's own training prompt, and a user template / suffixes are validated at config load."""

from __future__ import annotations

import pytest

from ral_dist.config import ConfigError, RLJobConfig, load_config
from ral_dist.data import QTYPES, GroundedVQAConfig, PromptConfig, Sample, generate
from ral_dist.data.prompts import (
    SYSTEM_PROMPT,
    chat_messages,
    question_offsets,
    question_span,
    target_text,
    user_text,
)

THINK = "Reason in <think></think>, then answer in <answer></answer>."
ANSWER_ONLY = "Answer in <answer></answer>."


@pytest.fixture(scope="module")
def synthetic() -> list[Sample]:
    return generate(GroundedVQAConfig(seed=2, qtype_weights={q: 1.0 for q in QTYPES}), "train", 40)


def _mc(**kw) -> Sample:
    return Sample(id="m", kind="video", media=["v.mp4"], question="What is shown?",
                  options=["A. a cat", "B. a dog"], answer="<answer>B</answer>", problem_type="multiple choice", **kw)


def test_default_reproduces_the_text_before_issue_18(synthetic):
    for s in synthetic:
        assert user_text(s, "think") == f"{s.question} {THINK}" == user_text(s, PromptConfig())
        assert user_text(s, "answer_only") == f"{s.question} {ANSWER_ONLY}" == user_text(
            s, PromptConfig(mode="answer_only"))
        assert target_text(s, "think") == f"<think>{s.rationale}</think><answer>{s.answer}</answer>"
        assert target_text(s, "answer_only") == f"<answer>{s.answer}</answer>"
    s = synthetic[0]
    assert SYSTEM_PROMPT == "Answer questions about the picture."
    assert chat_messages(s, "think") == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": s.kind}, {"type": "text", "text": f"{s.question} {THINK}"}]}]


def test_default_lists_options_after_the_question():
    assert user_text(_mc(), "answer_only") == f"What is shown?\nA. a cat\nB. a dog {ANSWER_ONLY}"


def test_video_r1_preset_is_video_r1s_training_prompt():
    think = ("Please think about this question as if you were a human pondering deeply. Engage in an internal "
             "dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it "
             "down', etc, or other natural language thought expressions It's encouraged to include self-reflection "
             "or verification in the reasoning process. Provide your detailed reasoning between the <think> </think> "
             "tags, and then give your final answer between the <answer> </answer> tags.")
    mc_suffix = (" Please provide only the single option letter (e.g., A, B, C, D, etc.) within the <answer> "
                 "</answer> tags.")
    cfg = PromptConfig(preset="video_r1")
    # Video-R1: problem + "Options:\n" + one option per line, then "\n" + its question template + the type suffix
    assert user_text(_mc(), cfg) == f"What is shown?Options:\nA. a cat\nB. a dog\n\n{think}{mc_suffix}"
    numerical = Sample(id="n", kind="image", media=["i.png"], question="How many?", answer="3",
                       problem_type="numerical", options=["ignored"])
    assert user_text(numerical, cfg) == (f"How many?\n{think} Please provide the numerical value (e.g., 42 or 3.14) "
                                         "within the <answer> </answer> tags.")
    assert chat_messages(numerical, cfg)[0]["role"] == "user"  # no system turn
    assert "<think>" not in user_text(numerical, PromptConfig(preset="video_r1", mode="answer_only"))


def test_a_user_template_and_suffixes():
    cfg = PromptConfig(template="Q: {{ question }} [{{ problem_type }}] {{ options | length }} {{ instruction }}",
                       type_suffix={"multiple choice": " Letter only."})
    assert user_text(_mc(), cfg) == f"Q: What is shown? [multiple choice] 2 {THINK} Letter only."
    text = user_text(_mc(), cfg)
    start, end = question_offsets(text, _mc())
    assert text[start:end] == question_span(_mc()) == "What is shown?"


def test_bad_templates_fail_at_config_load():
    with pytest.raises(ValueError, match="does not compile"):
        PromptConfig(template="{{ question ")
    with pytest.raises(ValueError, match="unknown problem types"):
        PromptConfig(type_suffix={"essay": "!"})
    undefined = PromptConfig(template="{{ questoin }}")
    with pytest.raises(Exception, match="questoin"):  # StrictUndefined: a typo is an error, not empty text
        user_text(_mc(), undefined)
    with pytest.raises(ValueError):
        user_text(_mc(), "cot")


def test_prompt_and_media_settings_load_from_the_config():
    cfg = load_config(RLJobConfig, None, ["data.prompt.mode=answer_only", "data.prompt.preset=video_r1"])
    assert cfg.data.prompt == PromptConfig(preset="video_r1", mode="answer_only")
    with pytest.raises(ConfigError, match="data.prompt_mode"):  # one name per setting: data.prompt.mode
        load_config(RLJobConfig, None, ["data.prompt_mode=think"])
    media = load_config(RLJobConfig, None, ["data.video.fps=2", "data.image.max_pixels=1000000"]).data.media
    assert media.video.fps == 2 and media.image.max_pixels == 1000000
