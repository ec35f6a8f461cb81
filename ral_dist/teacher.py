"""TeacherActor: a frozen larger model of the student's family that scores the student's own trajectories (RAL.md §5).

For each trajectory it returns the teacher's attention policy rows (last LM layer, heads averaged, the same rows
and unpadded layout as the student's capture) and its token distribution at the student's tokens (full, or
top-k log-probs with the residual as one bucket). Position i must be the same token for both models, so the
pair is checked first (`check_pair`, pure): same family, tokenizer (vocabulary, merges, special tokens, chat
template), the image-processor settings that decide how many visual tokens an image becomes, and the logit size.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from ral_dist import metrics
from ral_dist.collate import learner_batch
from ral_dist.config import DistillJobConfig, job_config
from ral_dist.generation import score_responses
from ral_dist.messages import RolloutBatch, TeacherTargets, Trajectory
from ral_dist.models import adapter_for_checkpoint, build_policy, get_adapter
from ral_dist.models.capture import use_capture_attention

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


def _place(adapter, model: torch.nn.Module) -> torch.device:
    """The teacher on its GPU(s): one GPU holds it whole; with several (a 32B teacher) accelerate splits it."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if torch.cuda.device_count() > 1:
        from accelerate import dispatch_model, infer_auto_device_map

        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
        dispatch_model(model, device_map=device_map)  # inputs go to cuda:0; accelerate moves activations on
        # the capture's row indices are built on the input device, the last layer may sit on another GPU
        adapter.language_layers(model)[-1].self_attn.register_forward_pre_hook(_capture_to_module_device)
    else:
        model.to("cuda")
    return torch.device("cuda", 0)


def _capture_to_module_device(module: torch.nn.Module, _args) -> None:
    request = module.__dict__.get("_ral_capture")
    if request is not None:
        device = next(module.parameters()).device
        request.rows, request.key_mask = request.rows.to(device), request.key_mask.to(device)


class KeepLogits:
    """Keeps the ``logits`` of the next forward of a module (a forward hook: works through a DeepSpeed engine)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.logits = module, None

    def __enter__(self) -> KeepLogits:
        self._handle = self.module.register_forward_hook(lambda _m, _i, out: setattr(self, "logits", out.logits))
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def response_logits(logits: torch.Tensor, prompt_len: int, n_response: int, temperature: float) -> torch.Tensor:
    """The logits [B, R, V] that predict the response tokens, fp32 over the temperature (as `score_responses`)."""
    return logits[:, prompt_len - 1 : prompt_len - 1 + n_response].float() / temperature


class TeacherActor:
    def __init__(self, index: int, config: dict, student: dict, threads: int = 1):
        """``student``: the student's `fingerprint`; a mismatched teacher fails here, before any training step."""
        self.cfg = cfg = job_config(config)
        torch.set_num_threads(threads)
        self.index = index
        tc = cfg.teacher
        dtype = torch.bfloat16 if tc.dtype == "bfloat16" else torch.float32
        self.adapter, self.model, self.processor = build_policy(tc.family, tc.checkpoint, tc.tiny, seed=tc.seed,
                                                                dtype=dtype)
        check_pair(student, fingerprint(self.adapter, self.processor,
                                        self.model.get_output_embeddings().out_features))
        use_capture_attention(self.model)
        self.model.eval().requires_grad_(False)
        self.device = _place(self.adapter, self.model)
        self.pad_id = self.processor.tokenizer.pad_token_id
        metrics.count_start("teacher")

    def ready(self) -> int:
        return self.index

    @metrics.timed("teacher")
    def targets(self, batch: RolloutBatch | list[Trajectory], audit_path: str | None = None
                ) -> tuple[list[TeacherTargets], dict]:
        """Targets for every trajectory of one rollout chunk, in order, and {"seconds", "trajectories"}.

        With ``audit_path`` the chunk's trajectories and targets are also saved there (torch.save).
        """
        t0 = time.perf_counter()
        trajs = batch.trajectories if isinstance(batch, RolloutBatch) else list(batch)
        out: list[TeacherTargets] = []
        for start in range(0, len(trajs), self.cfg.teacher.batch_size):
            out.extend(self._score(trajs[start : start + self.cfg.teacher.batch_size]))
        if audit_path:
            Path(audit_path).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"trajectories": trajs, "targets": out}, audit_path)
        return out, {"seconds": time.perf_counter() - t0, "trajectories": len(out)}

    @torch.no_grad()
    def _score(self, trajs: list[Trajectory]) -> list[TeacherTargets]:
        cfg, tc = self.cfg, self.cfg.teacher
        # Re-encoded with the teacher's processor; a prompt that encodes to another length than the student's fails.
        lb = learner_batch(self.adapter, self.processor, trajs, cfg.data.prompt_mode)
        prompts = lb.prompts
        if self.device.type != "cpu":
            prompts.inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in prompts.inputs.items()}
        ids, mask = lb.response_ids.to(self.device), lb.response_mask.to(self.device)
        with KeepLogits(self.model) as kept:
            token_logp, attn, _, _ = score_responses(
                self.adapter, self.model, prompts, ids, mask, self.pad_id, temperature=cfg.rollout.temperature,
                capture=True, alignment=cfg.rollout.attention_rows)
        logp = torch.log_softmax(response_logits(kept.logits, prompts.prompt_len, ids.shape[1],
                                                 cfg.rollout.temperature), -1)
        wire = torch.float16 if tc.attention_wire_dtype == "float16" else torch.float32
        P = prompts.prompt_len
        out = []
        for b, t in enumerate(trajs):
            n, off = len(t.response_ids), P - t.prompt_len
            target = TeacherTargets(attention=attn[b, :n, off : P + n].to(wire).cpu().clone(),
                                    token_logprobs=token_logp[b, :n].float().cpu().clone())
            if tc.top_k is None:
                target.logprobs = logp[b, :n].cpu().clone()
            else:
                top = torch.topk(logp[b, :n], tc.top_k, dim=-1)
                target.topk_ids, target.topk_logprobs = top.indices.cpu(), top.values.cpu()
            out.append(target)
        return out
