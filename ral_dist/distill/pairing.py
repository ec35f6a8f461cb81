"""The teacher/student pair check of distillation (RAL.md §5: position i must be the same token for both models).

Pure: it compares what decides token ids and visual-token positions — family, tokenizer (vocabulary, merges,
special tokens, chat template), the image-processor settings that decide how many visual tokens an image becomes,
and the logit size. The driver checks a job's pair before any actor starts; each TeacherActor checks again.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from ral_dist.distill_config import DistillJobConfig
from ral_dist.models import adapter_for_checkpoint, get_adapter

# Image-processor settings that decide the number and order of visual tokens (mean/std/rescale only change pixels).
POSITION_SETTINGS = ("patch_size", "merge_size", "temporal_patch_size", "size", "min_pixels", "max_pixels",
                     "do_resize", "do_image_splitting", "max_image_size", "do_pad")


class TeacherMismatchError(ValueError):
    """Teacher and student do not put the same token at the same position; the message lists every difference."""


def fingerprint(adapter, processor, logit_size: int) -> dict:
    """Everything of one side of the pair that decides token ids and visual-token positions."""
    tok = processor.tokenizer
    backend = json.loads(tok.backend_tokenizer.to_str())
    fp = {
        "family": adapter.family,
        "tokenizer vocabulary": tok.get_vocab(),
        "tokenizer merges": backend["model"].get("merges"),
        "tokenizer normalizer / pre-tokenizer": [backend.get("normalizer"), backend.get("pre_tokenizer")],
        "special tokens": {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens},
        "chat template": tok.chat_template,
        "logit size": int(logit_size),
    }
    ip = processor.image_processor.to_dict()
    for key in POSITION_SETTINGS:
        if key in ip:
            fp[f"image processor {key}"] = ip[key]
    if hasattr(processor, "image_seq_len"):
        fp["processor image_seq_len"] = processor.image_seq_len
    return fp


def _describe(key: str, student, teacher) -> str:
    if isinstance(student, dict) and isinstance(teacher, dict):
        differ = sorted(k for k in student.keys() | teacher.keys() if student.get(k) != teacher.get(k))
        examples = ", ".join(f"{k!r}: {student.get(k)} vs {teacher.get(k)}" for k in differ[:3])
        return f"{key}: {len(differ)} entries differ ({examples})"
    if isinstance(student, list) and isinstance(teacher, list) and len(student) > 20:
        return f"{key}: differ ({len(student)} vs {len(teacher)} entries)"
    return f"{key}: student {_short(student)}, teacher {_short(teacher)}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "..."


def check_pair(student: dict, teacher: dict) -> None:
    """Raise `TeacherMismatchError` naming every difference between two `fingerprint`s; return if they agree."""
    problems = [_describe(k, student.get(k), teacher.get(k)) for k in sorted(student.keys() | teacher.keys())
                if student.get(k) != teacher.get(k)]
    if problems:
        raise TeacherMismatchError("teacher and student must share tokenizer and image processor (RAL.md §5: "
                                   "position i is the same token for both); they differ in " + "; ".join(problems))


def side_fingerprint(family: str, checkpoint: str | None, tiny: dict | None = None) -> dict:
    """The fingerprint of a model config without loading weights (the driver checks the pair before any actor)."""
    if checkpoint:
        if not (Path(checkpoint) / "config.json").exists():
            raise FileNotFoundError(f"{checkpoint} is not a Hugging Face checkpoint (no config.json)")
        adapter = adapter_for_checkpoint(checkpoint)
        processor = adapter.load_processor(checkpoint)
        config = adapter.model_class().config_class.from_pretrained(checkpoint)
    else:
        adapter = get_adapter(family)
        processor = adapter.build_processor()
        config = adapter.tiny_config(processor, **copy.deepcopy(tiny or {}))
    return fingerprint(adapter, processor, config.get_text_config().vocab_size)


def check_job_pair(cfg: DistillJobConfig) -> None:
    """The pair of a resolved job config (no ``sft:`` left): raises `TeacherMismatchError` naming the fields."""
    sides = {}
    for field, m in (("model", cfg.model), ("teacher", cfg.teacher)):
        try:
            sides[field] = side_fingerprint(m.family, m.checkpoint, m.tiny)
        except FileNotFoundError as exc:
            raise TeacherMismatchError(f"{field}.checkpoint: {exc}") from None
    try:
        check_pair(sides["model"], sides["teacher"])
    except TeacherMismatchError as exc:
        name = {f: m.checkpoint or f"a tiny {m.family}" for f, m in (("model", cfg.model), ("teacher", cfg.teacher))}
        raise TeacherMismatchError(f"teacher.checkpoint ({name['teacher']}) does not fit model.checkpoint "
                                   f"({name['model']}): {exc}") from None
    teacher = sides["teacher"]
    if cfg.teacher.top_k is not None and cfg.teacher.top_k > teacher["logit size"]:
        raise TeacherMismatchError(f"teacher.top_k ({cfg.teacher.top_k}) exceeds the vocabulary "
                                   f"({teacher['logit size']})")
