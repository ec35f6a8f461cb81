"""RolloutWorker: holds the policy, samples G responses per prompt, and returns them with p_old attached.

The attention rows and log-probs come from the passes that sampled (captured as each token is fed back; with the
vLLM engine, one scoring pass of the replica right after), so `Trajectory.attention` is the behaviour policy's
attention policy of RAL.md §1.
"""

from __future__ import annotations

import io

import ray
import torch

from ral_dist import metrics
from ral_dist.collate import trajectories_from_generation
from ral_dist.config import RLJobConfig
from ral_dist.generation import generate
from ral_dist.heatmaps import save_heatmap
from ral_dist.messages import RolloutBatch, Trajectory
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.prompting import visual_prompt
from ral_dist.response_spans import answer_token_mask


class RolloutWorker:
    def __init__(self, index: int, config: dict, threads: int = 1):
        self.cfg = RLJobConfig.model_validate(config)
        torch.set_num_threads(threads)
        self.index = index
        m = self.cfg.model
        self.adapter, self.model, self.processor = build_policy(m.family, m.checkpoint, m.tiny, seed=self.cfg.run.seed)
        use_capture_attention(self.model)
        self.model.eval()
        self.engine = None  # engine "vllm": vLLM samples; self.model stays as the replica that adds p_old
        if self.cfg.rollout.engine == "vllm":
            from ral_dist.vllm_engine import VLLMEngine

            self.engine = VLLMEngine(self.cfg, self.adapter, self.model, self.processor)
        self.version = 0
        ip = getattr(self.processor, "image_processor", None)
        self.temporal_patch = 1 if self.adapter.family == "idefics3" else getattr(ip, "temporal_patch_size", 1)
        metrics.count_start("rollout")

    def update_weights(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        """Load the learner's weights in place (strict: a mismatched state fails loudly)."""
        self.model.load_state_dict(state_dict, strict=True)
        if self.engine is not None:
            self.engine.load_state_dict(version, state_dict)  # into the running engine, timed out and retried
        self.version = version
        return version

    @metrics.timed("rollout")
    def rollout(self, step: int, samples: list, groups: list[int], weights: list | None = None) -> RolloutBatch:
        """G responses for each prompt. ``weights`` = [(version, state ref)] of the current policy: a worker that
        Ray restarted (so it holds the initial weights) loads them before it samples."""
        if weights:
            version, state_ref = weights[0]
            if version != self.version:
                self.update_weights(version, ray.get(state_ref))
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
        try:
            return RolloutBatch(self._rollout(step, samples, groups), groups, [], restarted, self._engine_stats())
        except (ValueError, RuntimeError, OSError):
            # Find the prompts that cannot be processed, skip them with the reason, roll out the rest.
            mode, good, skipped = self.cfg.data.prompt_mode, [], []
            for sample, group in zip(samples, groups, strict=True):
                try:
                    self.adapter.encode(self.processor, [visual_prompt(sample, mode)])
                    good.append((sample, group))
                except Exception as exc:  # noqa: BLE001 — any failure of one prompt is that prompt's reason
                    skipped.append((group, sample.id, f"{type(exc).__name__}: {exc}"[:200]))
            if not skipped:
                raise
            kept = self._rollout(step, [g[0] for g in good], [g[1] for g in good]) if good else []
            return RolloutBatch(kept, groups, skipped, restarted, self._engine_stats())

    def _rollout(self, step: int, samples: list, groups: list[int]) -> list[Trajectory]:
        rc = self.cfg.rollout
        mode = self.cfg.data.prompt_mode
        if self.engine is not None:
            gen = self.engine.rollout_generation([visual_prompt(s, mode) for s in samples], step, groups)
        else:
            gen = generate(self.adapter, self.model, self.processor, [visual_prompt(s, mode) for s in samples],
                           num_samples=rc.group_size, max_new_tokens=rc.max_new_tokens, temperature=rc.temperature,
                           top_p=rc.top_p, capture=True, capture_question=True, alignment=rc.attention_rows,
                           seed=hash((self.cfg.run.seed, step, groups[0] if groups else 0)) % 2**31)
        metrics.record_rollout(gen)
        expanded = [s for s in samples for _ in range(rc.group_size)]
        expanded_groups = [g for g in groups for _ in range(rc.group_size)]
        wire = torch.float16 if rc.attention_wire_dtype == "float16" else torch.float32
        return trajectories_from_generation(gen, expanded, expanded_groups, self.version, self.temporal_patch,
                                            rc.max_new_tokens, wire)

    def heatmaps(self, samples: list) -> list[tuple[str, bytes]]:
        """Greedy answers to fixed prompts and PNG heatmaps of their answer tokens' visual attention."""
        mode = self.cfg.data.prompt_mode
        gen = generate(self.adapter, self.model, self.processor, [visual_prompt(s, mode) for s in samples],
                       greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens, capture=True)
        out = []
        for i, s in enumerate(samples):
            rows = answer_token_mask(self.processor.tokenizer, gen.response_ids[i], gen.response_mask[i])
            visual = gen.attention[i][rows][:, gen.prompts.visual_positions[i]].mean(0)
            buf = io.BytesIO()
            save_heatmap(s.get_images(), visual, gen.prompts.visual_grids[i], self.temporal_patch, buf,
                         title=f"{s.question} -> {gen.texts[i]!r} (gt {s.answer})")
            out.append((s.id, buf.getvalue()))
        return out

    def param_digest(self) -> float:
        """The replica's float64 parameter sum; NaN (out of sync) when vLLM's greedy output differs from it."""
        if self.engine is not None and not self.engine.verify_sync(self.version):
            return float("nan")
        return float(sum(p.detach().double().sum() for p in self.model.parameters()))

    def _engine_stats(self) -> dict:
        return dict(self.engine.stats) if self.engine is not None else {}

    def get_version(self) -> int:
        return self.version

    def state_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
