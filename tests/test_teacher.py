"""The TeacherActor without Ray: the tokenizer/processor pair check, and its targets against a direct capture.

The teacher here is a randomly initialised larger tiny Qwen2.5-VL (no SFT: the targets' exactness does not depend
on what the teacher learned, and the test stays fast).
"""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sampled import sampled_trajectories
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from ral_dist.config import DataConfig
from ral_dist.distill.pairing import TeacherMismatchError, check_pair, fingerprint, side_fingerprint
from ral_dist.distill.teacher import TeacherActor
from ral_dist.distill_config import DistillJobConfig
from ral_dist.messages import ChunkAccounting, join_shards, split_shards
from ral_dist.models import append_response, build_policy, get_adapter
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import forward_responses, token_log_softmax
from ral_dist.models.prompting import visual_prompt
from ral_dist.models.qwen_vl import CHAT_TEMPLATE, SPECIAL_TOKENS, QwenVLProcessor
from ral_dist.models.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TEACHER_TINY = {"text": {"hidden_size": 192, "intermediate_size": 384, "num_hidden_layers": 6,
                         "num_attention_heads": 6, "num_key_value_heads": 2}}
MODE = "think"


def _qwen(processor) -> dict:
    adapter = get_adapter("qwen2_5_vl")
    return fingerprint(adapter, processor, len(processor.tokenizer))


def test_a_larger_model_of_the_same_family_passes():
    check_pair(side_fingerprint("qwen2_5_vl", None, {}), side_fingerprint("qwen2_5_vl", None, TEACHER_TINY))


def test_a_different_tokenizer_is_refused():
    student = get_adapter("qwen2_5_vl").build_processor()
    other_tok = build_tokenizer(SPECIAL_TOKENS, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                chat_template=CHAT_TEMPLATE, vocab_size=700)
    teacher = QwenVLProcessor(other_tok, student.image_processor)
    with pytest.raises(TeacherMismatchError, match="tokenizer vocabulary: .* entries differ") as err:
        check_pair(_qwen(student), _qwen(teacher))
    differences = str(err.value).split("differ in ", 1)[1]
    assert "logit size: student 734, teacher 704" in differences and "image processor" not in differences


def test_a_different_image_processor_is_refused():
    adapter = get_adapter("qwen2_5_vl")
    student = adapter.build_processor()
    # a larger pixel budget: the same image becomes more visual tokens, so positions would not line up
    teacher = adapter.build_processor(max_pixels=896 * 896)
    with pytest.raises(TeacherMismatchError, match="image processor size") as err:
        check_pair(_qwen(student), _qwen(teacher))
    assert "tokenizer" not in str(err.value).split("differ in ", 1)[1]
    # the merge size changes the number of visual tokens as well
    merged = QwenVLProcessor(student.tokenizer, Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=1, temporal_patch_size=2, size=student.image_processor.size))
    with pytest.raises(TeacherMismatchError, match="image processor merge_size: student 2, teacher 1"):
        check_pair(_qwen(student), _qwen(merged))


def test_another_family_is_refused():
    with pytest.raises(TeacherMismatchError, match="family: student 'qwen2_5_vl', teacher 'idefics3'"):
        check_pair(side_fingerprint("qwen2_5_vl", None, {}), side_fingerprint("idefics3", None, {}))


def _config(top_k=None, tiny=TEACHER_TINY, family="qwen2_5_vl") -> dict:
    return DistillJobConfig.model_validate({
        "run": {"seed": 0}, "data": {"prompt": {"mode": MODE}},
        "rollout": {"temperature": 0.9, "max_new_tokens": 8},
        "teacher": {"family": family, "tiny": tiny, "seed": 1, "batch_size": 3, "top_k": top_k},
    }).model_dump(mode="json")


@pytest.fixture(scope="module")
def trajectories():
    """2 prompts x 3 responses sampled by a random tiny student, as a rollout worker ships them."""
    trajs, _ = sampled_trajectories(3, mode=MODE, temperature=0.9, wire_dtype=torch.float16)
    ragged = []
    for i, t in enumerate(trajs):  # ragged lengths, as EOS makes them (a random tiny model rarely samples it)
        n, b = 8 - i, t.behaviour
        ragged.append(dataclasses.replace(
            t, response=dataclasses.replace(t.response, ids=t.response.ids[:n]),
            behaviour=dataclasses.replace(b, logprobs=b.logprobs[:n], attention=b.attention[:n, : t.prompt.length + n])))
    return ragged


@pytest.fixture(scope="module")
def student_fp():
    return side_fingerprint("qwen2_5_vl", None, {})


def test_targets_match_a_direct_capture_row_by_row(trajectories, student_fp):
    teacher = TeacherActor(0, _config(), student_fp)
    # the actor's call as the queue makes it: a chunk of 2 prompts x 3 cut into 2 learner ranks' shares
    stats, *shards = teacher.targets(ChunkAccounting(groups=[0, 1]), *split_shards(trajectories, 0, 2))
    targets = join_shards(shards, 0)
    assert stats["trajectories"] == len(trajectories) == len(targets) == 6 and [len(s) for s in shards] == [3, 3]

    # the reference: the same teacher weights, each sequence alone (no batch padding), no grad
    adapter, model, processor = build_policy("qwen2_5_vl", None, TEACHER_TINY, seed=1)
    use_capture_attention(model).eval()
    pad = processor.tokenizer.pad_token_id
    lengths = set()
    for t, target in zip(trajectories, targets, strict=True):
        prompts = adapter.encode(processor, [visual_prompt(t.sample, DataConfig(prompt={"mode": MODE}))])
        assert prompts.prompt_len == t.prompt.length
        ids, mask = t.response.ids[None], torch.ones_like(t.response.ids)[None]
        with torch.no_grad():
            logits = model(**append_response(prompts.inputs, ids, mask, pad)).logits
            fwd = forward_responses(adapter, model, prompts, ids, mask, pad, temperature=0.9, banned=adapter.banned_token_ids(processor))
        logp, attn = fwd.logprobs, fwd.attention
        full = token_log_softmax(logits[0, t.prompt.length - 1 : -1], 0.9, adapter.banned_token_ids(processor))
        n = len(t.response.ids)
        lengths.add(n)
        assert target.attention.dtype == torch.float32 and target.attention.shape == t.behaviour.attention.shape
        assert (target.attention - attn[0]).abs().max() <= 1e-5
        assert torch.allclose(target.attention.sum(-1), torch.ones(n), atol=1e-5)  # rows are distributions
        assert (target.token_logprobs - logp[0]).abs().max() <= 1e-5
        assert target.logprobs.shape == (n, model.config.text_config.vocab_size)
        assert (target.logprobs - full).abs().max() <= 1e-5
        # not the student's rows (random tiny models attend almost uniformly, so the gap is small but clear)
        assert (target.attention - t.behaviour.attention.float()).abs().max() > 1e-4
    assert len(lengths) > 1  # responses of different lengths were batched together (padding handled)


def test_top_k_targets_are_the_top_of_the_full_distribution(trajectories, student_fp):
    full = TeacherActor(0, _config(), student_fp).targets_of(trajectories[:2])
    top = TeacherActor(0, _config(top_k=5), student_fp).targets_of(trajectories[:2])
    for f, t in zip(full, top, strict=True):
        assert f.logprobs is not None and t.logprobs is None and t.topk_ids.shape == (len(f.token_logprobs), 5)
        want = torch.topk(f.logprobs, 5, dim=-1)
        assert torch.equal(t.topk_ids, want.indices) and torch.allclose(t.topk_logprobs, want.values, atol=1e-6)
        residual = 1 - t.topk_logprobs.exp().sum(-1)
        assert bool((residual > 0).all()) and bool((residual < 1).all())
        assert torch.equal(f.attention, t.attention)


def test_a_mismatched_teacher_fails_at_start_up(student_fp):
    with pytest.raises(TeacherMismatchError, match="family"):
        TeacherActor(0, _config(tiny={}, family="idefics3"), student_fp)


def _job_config(teacher: dict) -> dict:
    return {"model": {"family": "qwen2_5_vl", "checkpoint": None},
            "data": {"task": {"seed": 3}, "sizes": {"train": 48, "val": 8, "test": 8}},
            "teacher": {"family": "qwen2_5_vl", **teacher}, "run": {"steps": 1}}


def _run_job(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "ral_distill.py"), "--config", str(path),
                           "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("teacher, expected", [
    ({"family": "idefics3"}, "teacher.checkpoint (a tiny idefics3) does not fit model.checkpoint (a tiny "
                             "qwen2_5_vl): teacher and student must share"),
    ("saved", "image processor size"),
    ({"top_k": 0}, "teacher.top_k"),
    ({"top_k": 5000}, "teacher.top_k (5000) exceeds the vocabulary"),
    ({"checkpoint": "/nonexistent/teacher"}, "teacher.checkpoint: /nonexistent/teacher is not a Hugging Face"),
])
def test_the_job_refuses_a_bad_teacher_before_ray_starts(tmp_path, teacher, expected):
    if teacher == "saved":
        # a real checkpoint of the same family whose processor makes more visual tokens per image
        adapter = get_adapter("qwen2_5_vl")
        model, _ = adapter.build_tiny(**TEACHER_TINY)
        processor = adapter.build_processor(max_pixels=896 * 896)
        model.save_pretrained(tmp_path / "teacher")
        processor.save_pretrained(tmp_path / "teacher")
        teacher = {"checkpoint": str(tmp_path / "teacher")}
    proc = _run_job(tmp_path, _job_config(teacher))
    assert proc.returncode != 0
    assert expected in proc.stderr, proc.stderr[-2000:]
    assert "Ray instance" not in proc.stdout + proc.stderr  # refused before connecting to or starting Ray
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
