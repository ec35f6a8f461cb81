"""RolloutWorker: holds the policy, samples G responses per prompt, and returns them with p_old attached.

The attention rows and log-probs come from the passes that sampled (captured as each token is fed back; with the
vLLM engine, one forward of the worker's transformers replica right after), so `BehaviourPolicy.attention` is the
behaviour policy's attention policy of RAL.md §1.
"""

from __future__ import annotations

import io

import ray
import torch

from ral_dist.config import RLJobConfig
from ral_dist.evaluation.greedy import response_view
from ral_dist.evaluation.heatmaps import answer_heatmap
from ral_dist.messages import ChunkAccounting, SkippedPrompt, Trajectory, chunk_offset, split_shards
from ral_dist.messages.collate import trajectories_from_generation
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import generate
from ral_dist.models.prompting import visual_prompt
from ral_dist.runtime import metrics
from ral_dist.vllm.sync_plan import sync_plan


class RolloutWorker:
    def __init__(self, index: int, config: dict, threads: int = 1):
        self.cfg = RLJobConfig.model_validate(config)
        torch.set_num_threads(threads)
        self.index = index
        m = self.cfg.model
        self.adapter, self.model, self.processor = build_policy(m.family, m.checkpoint, m.tiny, seed=self.cfg.run.seed)
        use_capture_attention(self.model)
        self.model.eval()
        self.vllm_engine = None  # rollout.engine vllm: vLLM samples; self.model stays as the replica that adds p_old
        if self.cfg.rollout.engine == "vllm":
            from ral_dist.vllm.engine import VLLMEngine

            self.vllm_engine = VLLMEngine(self.cfg, self.adapter, self.model, self.processor, sync_plan(self.cfg))
        self.version = 0
        self.temporal_patch = self.adapter.temporal_patch(self.processor)
        metrics.count_start("rollout")

    def update_weights(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        """Load the learner's weights in place (strict: a mismatched state fails loudly)."""
        self.model.load_state_dict(state_dict, strict=True)
        if self.vllm_engine is not None:
            self.vllm_engine.load_state_dict(version, state_dict)  # into the running engine, timed out and retried
        self.version = version
        return version

    def vllm_weight_transfer(self, method: str, *args) -> None:
        """The receiving side of a broadcast weight sync (`ral_dist.vllm.broadcast_sync.RolloutActorsClient`)."""
        self.vllm_engine.weight_transfer(method, *args)

    @metrics.timed("rollout")
    def rollout(self, step: int, samples: list, groups: list[int], weights: list | None = None) -> tuple:
        """G responses for each prompt: (the chunk's accounting, then one list of trajectories per learner rank,
        `split_shards`), so that Ray stores each rank's share as its own object (call with num_returns =
        learner.num_ranks + 1). ``weights`` = [(version, state ref)] of the current policy: a worker that Ray
        restarted (so it holds the initial weights) loads them before it samples."""
        if weights:
            version, state_ref = weights[0]
            if version != self.version:
                self.update_weights(version, ray.get(state_ref))
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        try:
            trajectories, skipped = self._sample(step, samples, groups), []
        except (ValueError, RuntimeError, OSError):
            # Find the prompts that cannot be processed, skip them with the reason, roll out the rest.
            good, skipped = self._processable(samples, groups)
            if not skipped:
                raise
            trajectories = self._sample(step, [s for s, _ in good], [g for _, g in good]) if good else []
        engine_stats = dict(self.vllm_engine.stats) if self.vllm_engine is not None else {}
        accounting = ChunkAccounting(groups, skipped, restarted, engine_stats)
        offset = chunk_offset(accounting, self.cfg.rollout.group_size)
        return (accounting, *split_shards(trajectories, offset, self.cfg.learner.num_ranks))

    def _processable(self, samples: list, groups: list[int]) -> tuple[list[tuple], list[SkippedPrompt]]:
        """(sample, group) of the prompts the adapter can encode, and the others with why."""
        good, skipped = [], []
        for sample, group in zip(samples, groups, strict=True):
            try:
                self.adapter.encode(self.processor, [visual_prompt(sample, self.cfg.data)])
                good.append((sample, group))
            except Exception as exc:  # noqa: BLE001 — any failure of one prompt is that prompt's reason
                skipped.append(SkippedPrompt(group, sample.id, f"{type(exc).__name__}: {exc}"[:200]))
        return good, skipped

    def _sample(self, step: int, samples: list, groups: list[int]) -> list[Trajectory]:
        rc = self.cfg.rollout
        prompts = [visual_prompt(s, self.cfg.data) for s in samples]
        seed = hash((self.cfg.run.seed, step, groups[0] if groups else 0)) % 2**31
        if self.vllm_engine is not None:
            gen = self.vllm_engine.rollout_generation(prompts, seed)
        else:
            gen = generate(self.adapter, self.model, self.processor, prompts, num_samples=rc.group_size,
                           max_new_tokens=rc.max_new_tokens, temperature=rc.temperature, top_p=rc.top_p,
                           capture=True, capture_question=True, alignment=rc.attention_rows, seed=seed)
        metrics.record_rollout(gen)
        expanded = [s for s in samples for _ in range(rc.group_size)]
        expanded_groups = [g for g in groups for _ in range(rc.group_size)]
        wire = torch.float16 if rc.attention_wire_dtype == "float16" else torch.float32
        return trajectories_from_generation(gen, expanded, expanded_groups, self.version, self.temporal_patch,
                                            rc.max_new_tokens, wire)

    def heatmaps(self, samples: list) -> list[tuple[str, bytes]]:
        """Greedy answers to fixed prompts and PNG heatmaps of their answer tokens' visual attention."""
        prompts = [visual_prompt(s, self.cfg.data) for s in samples]
        gen = generate(self.adapter, self.model, self.processor, prompts, greedy=True,
                       max_new_tokens=self.cfg.rollout.max_new_tokens, capture=True, capture_question=True)
        out = []
        for i, s in enumerate(samples):
            buf = io.BytesIO()
            view = response_view(gen, i, s, self.temporal_patch, self.processor.tokenizer, self.cfg.data.prompt.mode)
            answer_heatmap(view, prompts[i].frames, buf)
            out.append((s.id, buf.getvalue()))
        return out

    def param_digest(self) -> float:
        """The replica's float64 parameter sum; NaN (out of sync) when vLLM's greedy output differs from it."""
        if self.vllm_engine is not None and not self.vllm_engine.verify_sync(self.version):
            return float("nan")
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    def get_version(self) -> int:
        return self.version

    def state_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
