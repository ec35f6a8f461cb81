"""TeacherActor: a frozen larger model of the student's family that scores the student's own trajectories (RAL.md §5).

For each trajectory it returns the teacher's attention policy rows (last LM layer, heads averaged, the same rows
and unpadded layout as the student's capture) and its token distribution at the student's tokens (full, or
top-k log-probs with the residual as one bucket). The pair is checked at start-up (`ral_dist.distill.pairing`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ral_dist.distill.pairing import check_pair, fingerprint
from ral_dist.distill.targets import TeacherTargets
from ral_dist.distill_config import DistillJobConfig
from ral_dist.messages import ChunkAccounting, Trajectory, chunk_offset, join_shards, split_shards
from ral_dist.messages.collate import response_batch
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import forward_responses
from ral_dist.runtime import metrics
from ral_dist.runtime.devices import actor_device, assigned_gpu_ids


def _place(adapter, model: torch.nn.Module) -> torch.device:
    """The teacher on the GPU(s) Ray assigned this actor (decided here, never by the driver): one GPU holds it
    whole; with several (a 32B teacher) accelerate splits it; none: the CPU."""
    gpu_ids = assigned_gpu_ids()
    device = actor_device(gpu_ids, torch.cuda.is_available())
    if device.type == "cpu":
        return device
    if len(gpu_ids) > 1:
        from accelerate import dispatch_model, infer_auto_device_map

        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
        dispatch_model(model, device_map=device_map)  # inputs go to cuda:0; accelerate moves activations on
        # the capture's row indices are built on the input device, a captured layer may sit on another GPU
        for layer in adapter.language_layers(model):
            layer.self_attn.register_forward_pre_hook(_capture_to_module_device)
    else:
        model.to(device)
    return device


def _capture_to_module_device(module: torch.nn.Module, _args) -> None:
    request = module.__dict__.get("_ral_capture")
    if request is not None:
        device = next(module.parameters()).device
        request.rows, request.key_mask = request.rows.to(device), request.key_mask.to(device)


class TeacherActor:
    def __init__(self, index: int, config: dict, student: dict, threads: int = 1):
        """``student``: the student's `fingerprint`; a mismatched teacher fails here, before any training step."""
        self.cfg = cfg = DistillJobConfig.model_validate(config)
        torch.set_num_threads(threads)
        self.index = index
        tc = cfg.teacher
        dtype = torch.bfloat16 if tc.dtype == "bfloat16" else torch.float32
        self.adapter, self.model, self.processor = build_policy(tc.family, tc.checkpoint, tc.tiny, seed=tc.seed,
                                                                dtype=dtype)
        check_pair(student, fingerprint(self.adapter, self.processor,
                                        self.model.get_output_embeddings().out_features))
        use_capture_attention(self.model)
        self.banned = self.adapter.banned_token_ids(self.processor)  # read once: every forward scores without them
        self.model.eval().requires_grad_(False)
        self.device = _place(self.adapter, self.model)
        metrics.count_start("teacher")

    def ready(self) -> int:
        return self.index

    @metrics.timed("teacher")
    def targets(self, accounting: ChunkAccounting, *shards: list[Trajectory], audit_path: str | None = None
                ) -> tuple:
        """Targets of one rollout chunk (its accounting and its trajectories cut into the learner ranks' shares):
        ({"seconds", "trajectories"}, then each rank's targets, cut like its trajectories).

        With ``audit_path`` the chunk's trajectories and targets are also saved there (torch.save).
        """
        t0 = time.perf_counter()
        offset = chunk_offset(accounting, self.cfg.rollout.group_size)
        trajs = join_shards(list(shards), offset)
        out = self.targets_of(trajs)
        if audit_path:
            Path(audit_path).parent.mkdir(parents=True, exist_ok=True)
            torch.save({"trajectories": trajs, "targets": out}, audit_path)
        stats = {"seconds": time.perf_counter() - t0, "trajectories": len(out)}
        return (stats, *split_shards(out, offset, len(shards)))

    def targets_of(self, trajs: list[Trajectory]) -> list[TeacherTargets]:
        """Targets for every trajectory, in order, in batches of teacher.batch_size."""
        out: list[TeacherTargets] = []
        for start in range(0, len(trajs), self.cfg.teacher.batch_size):
            out.extend(self._targets_of(trajs[start : start + self.cfg.teacher.batch_size]))
        return out

    @torch.no_grad()
    def _targets_of(self, trajs: list[Trajectory]) -> list[TeacherTargets]:
        cfg, tc = self.cfg, self.cfg.teacher
        # Re-encoded with the teacher's processor; a prompt that encodes to another length than the student's fails.
        batch = response_batch(self.adapter, self.processor, trajs, cfg.data, share=True).to(self.device)
        fwd = forward_responses(self.adapter, self.model, batch.prompts, batch.response_ids, batch.response_mask,
                                self.processor.tokenizer.pad_token_id, temperature=cfg.rollout.temperature,
                                banned=self.banned, capture=True, alignment=cfg.rollout.attention_rows,
                                keep_logits=True, layers=cfg.attention.layers, shared=batch.shared)
        wire = torch.float16 if tc.attention_wire_dtype == "float16" else torch.float32
        attention = batch.unpad(fwd.attention, keys=True)
        token_logprobs = batch.unpad(fwd.logprobs)
        logprobs = batch.unpad(torch.log_softmax(fwd.logits / cfg.rollout.temperature, -1))
        out = []
        for att, tok_lp, lp in zip(attention, token_logprobs, logprobs, strict=True):
            common = {"attention": att.to(wire).cpu().clone(), "token_logprobs": tok_lp.float().cpu().clone()}
            if tc.top_k is None:
                out.append(TeacherTargets(**common, logprobs=lp.cpu().clone()))
            else:
                top = torch.topk(lp, tc.top_k, dim=-1)
                out.append(TeacherTargets(**common, topk_ids=top.indices.cpu(), topk_logprobs=top.values.cpu()))
        return out
