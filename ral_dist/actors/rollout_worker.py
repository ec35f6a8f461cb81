"""RolloutWorker: holds the policy, samples G responses per prompt, and returns them with p_old attached.

The attention rows and log-probs come from the passes that sampled (captured as each token is fed back; with the
vLLM engine, one forward of the worker's transformers replica right after), so `BehaviourPolicy.attention` is the
behaviour policy's attention policy of RAL.md §1.

Placement (`rollout_placement`, decided here from what Ray assigned the actor, never by the driver): the
transformers model that scores (the hf engine's sampler, or the replica beside vLLM) runs on the worker's GPU in
the model dtype, with as many threads as the CPUs Ray gave the actor. Beside vLLM with ``rollout.attention_on``
resolving to learner (vLLM owns the GPU) there is no transformers copy of the weights at all: the learner scores,
and draws the heatmaps of vLLM's greedy answers.

The sync check (``run.verify_sync``, `sync_check`): the digest of the weights held here (the scoring model, each
vLLM worker) against the learner's (`ral_dist.vllm.weight_digest`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import ray
import torch

from ral_dist.config import RLJobConfig
from ral_dist.evaluation.answer_heatmaps import render
from ral_dist.evaluation.validation import generation_rows, greedy_rows
from ral_dist.messages import ChunkAccounting, SkippedPrompt, Trajectory, chunk_offset, split_shards
from ral_dist.messages.collate import trajectories_from_generation
from ral_dist.messages.weights import load_weights
from ral_dist.models import adapter_for_checkpoint, build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import generate
from ral_dist.models.prompting import visual_prompt
from ral_dist.rewards import reward_terms
from ral_dist.runtime import metrics
from ral_dist.runtime.devices import actor_device, assigned_gpu_ids, compute_dtype
from ral_dist.runtime.environment import process_environment
from ral_dist.vllm.sync_plan import sync_plan
from ral_dist.vllm.weight_digest import SyncCheck, state_digest


@dataclass(frozen=True)
class RolloutPlacement:
    device: torch.device  # of the transformers model (the hf engine's sampler, or the replica beside vLLM)
    dtype: torch.dtype
    attention_on: Literal["rollout", "learner"]  # who scores p_old and the old log-probs
    threads: int

    @property
    def scores(self) -> bool:
        """The transformers model scores every rollout (hf engine, or the replica with attention_on rollout)."""
        return self.attention_on == "rollout"


def rollout_placement(gpu_ids: Sequence, cfg: RLJobConfig, cuda_available: bool,
                      cpus: float | None = None) -> RolloutPlacement:
    """Where a rollout worker's transformers model runs, given the GPU ids Ray assigned the actor and its CPUs:
    on its GPU in the model dtype when it scores, else on the CPU (vLLM has the GPU); threads = its whole CPUs."""
    attention_on = cfg.rollout.resolved_attention_on
    device = actor_device(gpu_ids, cuda_available) if attention_on == "rollout" else torch.device("cpu")
    threads = max(1, math.floor(cpus)) if cpus else 1
    return RolloutPlacement(device, compute_dtype(device, cfg.model.dtype), attention_on, threads)


def assigned_cpus() -> float | None:
    """The CPUs Ray assigned this actor; None outside a Ray worker."""
    if ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE:
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    return None


class RolloutWorker:
    def __init__(self, index: int, config: dict, threads: int | None = None):
        """``threads``: torch's intra-op threads (default: the CPUs Ray assigned the actor, 1 outside Ray)."""
        self.cfg = RLJobConfig.model_validate(config)
        self.placement = rollout_placement(assigned_gpu_ids(), self.cfg, torch.cuda.is_available(), assigned_cpus())
        torch.set_num_threads(threads or self.placement.threads)
        self.index = index
        model = self._build_model()
        self.vllm_engine = None  # rollout.engine vllm: vLLM samples; the model, if any, is the replica adding p_old
        self.plan = sync_plan(self.cfg)
        if self.cfg.rollout.engine == "vllm":
            from ral_dist.vllm.engine import VLLMEngine

            self.vllm_engine = VLLMEngine(self.cfg, self.adapter, model, self.processor, self.plan)
        # None beside vLLM when the learner scores: a tiny policy built only for vLLM to load is dropped here
        self.model = model if self.placement.scores else None
        self.version = 0
        self._check: SyncCheck | None = None  # the last sync's (run.verify_sync)
        self.temporal_patch = self.adapter.temporal_patch(self.processor)
        metrics.count_start("rollout")

    def _build_model(self):
        """The transformers model that scores (on its device, in its dtype, capture on), or None: vLLM loads a
        checkpoint itself and, when the learner scores, nothing here needs a copy of the weights. A tiny random
        policy is built even then, for vLLM to load its exact weights."""
        m = self.cfg.model
        if not self.placement.scores and m.checkpoint:
            self.adapter = adapter_for_checkpoint(m.checkpoint)
            self.processor = self.adapter.load_processor(m.checkpoint)
            return None
        self.adapter, model, self.processor = build_policy(m.family, m.checkpoint, m.tiny, seed=self.cfg.run.seed,
                                                           dtype=self.placement.dtype)
        use_capture_attention(model.to(self.placement.device))
        return model.eval()

    def update_weights(self, version: int, state_dict: dict[str, torch.Tensor] | None) -> int:
        """Load the learner's weights in place (strict: a mismatched state fails loudly): into the scoring model
        and, by bytes, the vLLM engine. Under a broadcast the engine gets them through `vllm_weight_transfer`, and
        ``state_dict`` is None when no model here holds a copy."""
        check = self._new_check(version) if self.cfg.run.verify_sync else None
        if self.model is not None:
            load_weights(self.model, state_dict)  # on the CPU: the handed tensors themselves, no copy
        reduced: dict = {}  # a tensor the model holds where it was handed is digested once
        if check is not None and self.plan.broadcast is None:
            check.reference = self._digest(check, state_dict.items(), reduced)  # the learner's weights as handed
        if check is not None and self.placement.scores:
            check.held[self._model_name] = self._digest(check, self.model.state_dict().items(), reduced)
        if self.vllm_engine is not None:
            held, seconds = self.vllm_engine.load_state_dict(version, state_dict)  # bytes: bounded, retried
            if check is not None:
                check.held.update(held)
                check.engine_seconds = seconds
        self.version, self._check = version, check
        return version

    @property
    def _model_name(self) -> str:
        return "policy" if self.vllm_engine is None else "replica"

    def _new_check(self, version: int) -> SyncCheck:
        holders = (self._model_name,) if self.placement.scores else ()
        if self.vllm_engine is not None:
            holders += tuple(f"vLLM worker {i}" for i in range(self.plan.ranks_per_engine))
        return SyncCheck(version, holders)

    @staticmethod
    def _digest(check: SyncCheck, items, reduced: dict) -> dict:
        t0 = time.perf_counter()
        digest = state_digest(items, reduced)
        check.seconds += time.perf_counter() - t0
        return digest

    def vllm_weight_transfer(self, method: str, *args, sent_digest: dict | None = None) -> None:
        """The receiving side of a broadcast weight sync (`ral_dist.vllm.broadcast_sync.RolloutActorsClient`);
        ``finish_weight_update`` carries the digest of what learner rank 0 sent, the sync check's reference."""
        received, seconds = self.vllm_engine.weight_transfer(method, *args)
        if method == "finish_weight_update" and self._check is not None:
            self._check.reference = sent_digest
            self._check.held.update(received)
            self._check.engine_seconds = seconds

    @metrics.timed("rollout")
    def rollout(self, step: int, samples: list, groups: list[int], weights: list | None = None) -> tuple:
        """G responses for each prompt: (the chunk's accounting, then one list of trajectories per learner rank,
        `split_shards`), so that Ray stores each rank's share as its own object (call with num_returns =
        learner.num_ranks + 1). ``weights`` = [(version, state ref)] of the current policy: a worker that Ray
        restarted (so it holds the initial weights) loads them before it samples."""
        if weights and weights[0][0] != self.version:
            version, state_ref = weights[0]
            if self.plan.broadcast:  # the engine restarted with the initial weights, and a broadcast is not replayed
                raise RuntimeError(f"rollout worker {self.index} restarted: its vLLM engine holds version "
                                   f"{self.version}, the policy is at {version}, and broadcast weights cannot be "
                                   "replayed to one engine; the run recovers from its last checkpoint")
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
                           capture=self.cfg.rollout_captures, capture_question=True, alignment=rc.attention_rows,
                           seed=seed, layers=self.cfg.attention.layers)
        metrics.record_rollout(gen)
        expanded = [s for s in samples for _ in range(rc.group_size)]
        expanded_groups = [g for g in groups for _ in range(rc.group_size)]
        wire = torch.float16 if rc.attention_wire_dtype == "float16" else torch.float32
        return trajectories_from_generation(gen, expanded, expanded_groups, self.version, self.temporal_patch,
                                            rc.max_new_tokens, wire)

    def heatmaps(self, samples: list) -> list[tuple[str, bytes]]:
        """Greedy answers to fixed prompts and PNG heatmaps of their answer tokens' visual attention (beside vLLM:
        vLLM's greedy answers, their rows from one forward of the replica). Without a model here (the learner
        scores), `greedy_answers` and the learner's `heatmaps` draw them."""
        prompts = [visual_prompt(s, self.cfg.data) for s in samples]
        max_new = self.cfg.rollout.max_new_tokens
        if self.vllm_engine is not None:
            gen = self.vllm_engine.generate(prompts, greedy=True, max_new_tokens=max_new, capture_question=True)
        else:
            gen = generate(self.adapter, self.model, self.processor, prompts, greedy=True, max_new_tokens=max_new,
                           capture=True, capture_question=True, layers=self.cfg.attention.layers)
        return render(gen, samples, prompts, self.temporal_patch, self.processor.tokenizer,
                      self.cfg.data.prompt.mode)

    def validate(self, samples: list) -> list[dict]:
        """Greedy answers to this worker's shard of the val split, one `generation_rows` row each (``run.val_every``;
        beside vLLM: vLLM's answers with the replica's rows). Without a model here (the learner scores),
        `greedy_answers` and the learner's `validation_rows` make them."""
        terms = reward_terms(self.cfg.reward)
        if self.vllm_engine is None:
            return greedy_rows(self.adapter, self.model, self.processor, samples, self.cfg.data,
                               self.cfg.rollout.max_new_tokens, terms, self.cfg.attention.layers)
        gen = self.vllm_engine.generate([visual_prompt(s, self.cfg.data) for s in samples], greedy=True,
                                        max_new_tokens=self.cfg.rollout.max_new_tokens, capture_question=True)
        return generation_rows(gen, samples, self.temporal_patch, self.processor.tokenizer,
                               self.cfg.data.prompt.mode, terms)

    def greedy_answers(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        """vLLM's greedy answers to fixed prompts: ([N, R] ids, mask), for the learner to draw their heatmaps."""
        prompts = [visual_prompt(s, self.cfg.data) for s in samples]
        gen = self.vllm_engine.generate(prompts, greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens,
                                        replica=False)
        return gen.response_ids, gen.response_mask

    def sync_check(self) -> dict:
        """The last sync's check (run.verify_sync): its version, why the weights held here differ from the
        learner's (empty: in sync) and the seconds it cost (digests here, then inside vLLM's workers)."""
        check = self._check
        if check is None:
            return {"version": self.version, "problems": [f"no sync check of version {self.version}"], "seconds": 0.0}
        problems = check.problems()
        if self.vllm_engine is not None:
            reference = check.reference or {}
            print(f"[vllm] v{check.version} weights digest {'ok' if not problems else 'MISMATCH'}: "
                  f"{', '.join(sorted(check.held))} against the learner's {len(reference)} tensors (sum "
                  f"{sum(d[0] for d in reference.values()):.9e}; {check.seconds:.4f}s here, "
                  f"{check.engine_seconds:.4f}s in vLLM)", flush=True)
        return {"version": check.version, "problems": problems, "seconds": check.seconds + check.engine_seconds}

    def get_version(self) -> int:
        return self.version

    def environment(self) -> dict:
        return process_environment()
