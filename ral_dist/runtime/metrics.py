"""Every Prometheus metric of ral_dist, and the small API the actors call to record them.

Metrics go through ``ray.util.metrics``: each Ray node's metrics agent exports them on its
``--metrics-export-port`` as ``ray_<name>``, in the same scrape as Ray's own node metrics, with the labels
Ray adds (``SessionName``, ``NodeAddress``, ``WorkerId``, ``Component``). Every process that records here is a
Ray worker or a Ray job driver, so ``prometheus-client`` is not needed; a process without Ray (the learner in
unit tests) records nothing.

Names follow Prometheus conventions (snake_case, ``_seconds``, ``_bytes``, counters end in ``_total``) and are
defined once, in ``METRICS``; the dashboards and alert rules in ``dashboards/`` import them from here.
Every series carries ``JobId`` (the Ray job id: Prometheus' own ``job`` label is the scrape job, so a tag of
that name would be renamed) and the kind of actor in ``actor``.

The distillation job adds the teacher: ``phase="teacher"`` (teacher compute seconds per step) and
``phase="teacher_wait"`` (how long the learners waited for targets), its queue depths, the ``reverse_kl`` loss
term and the student's attention JSD to the teacher.
Per-head attention spread is not measured: the captured policy is already averaged over heads (RAL.md §1).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from ral_dist.messages.stats import LearnerStepStats, PhaseTimes
from ral_dist.rewards import REWARD_TERMS as REGISTERED_TERMS

log = logging.getLogger(__name__)

PREFIX = "ray_"  # what Ray's exporter puts before every ray.util.metrics name

PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 300.0, 600.0, 1800.0)
# Ray refuses a bucket boundary <= 0; 0.001 catches the exact zeros of 0/1 terms.
SCORE_BUCKETS = (0.001, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.999)

# Label values known in advance (exported at 0 from the start, so rate() and the alerts work before the first
# event, as Prometheus' instrumentation guide asks).
ACTORS = ("controller", "rollout", "reward", "learner", "teacher")
REWARD_TERMS = tuple(REGISTERED_TERMS)  # the built-in terms; a job's reward.custom terms add their names
CONTROLLER_PHASES = PhaseTimes.phases()
ROLLOUT_PHASES = ("generation", "attention_capture")
LOSS_TERMS = ("total", "policy", "attention")
VAL_METRICS = ("accuracy", "format_rate", "attention_on_target", "target_fraction", "sparsity", "consistency",
               "response_length", "step")
SKIP_REASONS = ("prompt_unprocessable", "nonfinite_reward", "nonfinite_loss")
QUEUES = ("rollout_in_flight", "rollout_ready")
TEACHER_QUEUES = ("teacher_in_flight", "teacher_ready", "teacher_waiting")  # distillation job only


@dataclass(frozen=True)
class Metric:
    name: str  # as given to ray.util.metrics
    kind: Literal["gauge", "counter", "histogram"]
    description: str
    tags: tuple[str, ...] = ()  # besides JobId and actor, which every metric has
    buckets: tuple[float, ...] = ()

    @property
    def series(self) -> str:
        """The name Prometheus stores (histograms add _bucket, _sum and _count to it)."""
        return PREFIX + self.name

    @property
    def tag_keys(self) -> tuple[str, ...]:
        return ("JobId", "actor", *self.tags)


# -- progress (controller)
RUN_STEPS = Metric("ral_run_steps", "gauge", "Steps the run is configured for.")
STEP = Metric("ral_step", "gauge", "Last completed step (0-based).")
STEPS = Metric("ral_steps_total", "counter", "Steps completed by this job.")
POLICY_VERSION = Metric("ral_policy_version", "gauge", "Policy version after the step's update.")
STALENESS = Metric("ral_policy_staleness", "gauge", "Most policy versions a step's trajectories lagged the learner.")
QUEUE_DEPTH = Metric("ral_queue_depth", "gauge", "Rollout chunks launched for the next step: still running "
                 "(rollout_in_flight) or done and waiting for the controller (rollout_ready).", ("queue",))
# -- rewards (controller: step means; reward workers: per-trajectory distributions)
REWARD = Metric("ral_reward", "gauge", "Step mean of each reward term, and of the weighted total (term=total).",
            ("term",))
ACCURACY = Metric("ral_accuracy", "gauge", "Step mean exact-match accuracy of the sampled responses.")
ACCURACY_BY_TYPE = Metric("ral_accuracy_by_type", "gauge", "Step mean accuracy (the task term) per question type.",
                          ("qtype",))
REWARD_BY_TYPE = Metric("ral_reward_by_type", "gauge", "Step mean total reward per question type.", ("qtype",))
TRAJECTORIES_BY_TYPE = Metric("ral_trajectories_by_type_total", "counter", "Trajectories scored, per question type.",
                              ("qtype",))
ON_TARGET = Metric("ral_attention_on_target", "gauge", "Step mean share of the answer tokens' visual attention "
               "inside the ground-truth region (samples with regions only).")
TRAJECTORY_SCORE = Metric("ral_trajectory_score", "histogram", "Per-trajectory reward terms and total.", ("term",),
                      SCORE_BUCKETS)
REWARD_SCORED = Metric("ral_reward_scored_total", "counter", "Trajectories scored by the reward workers.")
REWARD_UNSCORED = Metric("ral_reward_unscored_total", "counter", "Reward terms that could not be computed and "
                     "scored 0 (RAL.md section 4).", ("term",))
SKIPPED = Metric("ral_skipped_total", "counter", "Work dropped, by reason: prompts a rollout worker could not process "
                 "(prompt_unprocessable; the reasons are in metrics.jsonl), trajectories with a non-finite reward "
                 "(nonfinite_reward: advantage zeroed), learner updates with a non-finite loss (nonfinite_loss).",
                 ("reason",))
VALIDATION = Metric("ral_validation", "gauge", "Last validation (greedy decoding of the val split, run.val_every): "
                    "accuracy, format_rate, attention_on_target and its chance level target_fraction, sparsity, "
                    "consistency, response_length (tokens), step (the step it followed), best_accuracy (of the run "
                    "so far) and alert_drop (run.val_alert_drop).", ("metric",))
VAL_ACCURACY_BY_TYPE = Metric("ral_validation_accuracy_by_type", "gauge", "Last validation's accuracy per question "
                              "type.", ("qtype",))
# -- learner (rank 0; loss terms averaged over ranks and mini-batches)
LOSS = Metric("ral_loss", "gauge", "Step mean of the loss and its terms (RAL.md section 3).", ("term",))
KL = Metric("ral_kl", "gauge", "Step mean KL(pi_theta || pi_ref), k3 estimator.")
ATTN_JSD = Metric("ral_attention_jsd", "gauge", "Step mean JSD between the learner's and the behaviour policy's "
              "attention policy.")
TEACHER_ATTN_JSD = Metric("ral_teacher_attention_jsd", "gauge", "Distillation job: step mean JSD between the "
                          "student's attention policy and the teacher's (RAL.md section 5).")
ATTN_GRAD_NORM = Metric("ral_attention_grad_norm", "gauge", "L2 norm of the attention term's own gradient.")
ATTN_GRAD_SHARE = Metric("ral_attention_grad_share", "gauge", "The attention term's gradient norm over the whole "
                         "update's, on the steps that measure it (learner.attn_grad_norm_every).")
CLIP_FRACTION = Metric("ral_clip_fraction", "gauge", "Share of response tokens whose PPO ratio was clipped.")
TRAINED_TOKENS = Metric("ral_trained_tokens_total", "counter", "Response tokens the learner trained on.")
UPDATES = Metric("ral_learner_updates_total", "counter", "Optimizer updates applied.")
# -- rollout workers
GENERATED_TOKENS = Metric("ral_generated_tokens_total", "counter", "Response tokens sampled.")
ROLLOUT_SAMPLES = Metric("ral_rollout_samples_total", "counter", "Responses sampled.")
# -- time and weights
PHASE_SECONDS = Metric("ral_phase_seconds", "histogram", "Seconds per phase: the controller's per-step phases (reward: "
                   "the wait for rewards once every rollout is in), and the rollout workers' generation (sampling "
                   "with the capture) and attention_capture (what is assembled after it; with vLLM, the scoring pass).", ("phase",),
                   PHASE_BUCKETS)
SYNC_SECONDS = Metric("ral_weight_sync_seconds", "histogram", "Seconds from the learner's weights to every rollout "
                  "worker holding them.", (), PHASE_BUCKETS)
SYNC_BYTES = Metric("ral_weight_sync_bytes_total", "counter", "Bytes of weights pushed to the rollout workers.")
BUSY = Metric("ral_actor_busy_seconds_total", "counter", "Seconds an actor spent in its work method (rollout, reward_batch, "
          "train_step): rate() is its utilisation.")
RESTARTS = Metric("ral_actor_restarts_total", "counter", "Actor restarts after a failure.")

METRICS: tuple[Metric, ...] = tuple(v for v in dict(globals()).values() if isinstance(v, Metric))
DISTILL_ONLY: tuple[Metric, ...] = (TEACHER_ATTN_JSD,)  # set by the distillation job's learners only


# ---------------------------------------------------------------------------------------------- recording

@functools.cache
def _ray_metric(metric: Metric):
    from ray.util import metrics as rm

    if metric.kind == "gauge":
        return rm.Gauge(metric.name, metric.description, tag_keys=metric.tag_keys)
    if metric.kind == "counter":
        return rm.Counter(metric.name, metric.description, tag_keys=metric.tag_keys)
    return rm.Histogram(metric.name, metric.description, boundaries=list(metric.buckets), tag_keys=metric.tag_keys)


@functools.cache
def _job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()


def _enabled() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tags(actor: str, **tags: str) -> dict[str, str]:
    return {"JobId": _job_id(), "actor": actor, **tags}


# Ray exports a gauge only while it is being set (it ages out after two report intervals), but a step's gauges
# hold until the next step, which can be minutes away: a daemon thread sets each live gauge again every second.
KEEP_ALIVE_S = 1.0
_live: dict[tuple[Metric, tuple], float] = {}
_keeper_lock = threading.Lock()
_keeper: list[threading.Thread] = []


def _keep_gauges_alive() -> None:
    while True:
        time.sleep(KEEP_ALIVE_S)
        for (metric, tags), value in list(_live.items()):
            try:
                _ray_metric(metric).set(value, tags=dict(tags))
            except Exception:  # the worker is shutting down: nothing left to export
                return


# positional-only: a tag may be called "metric" (ral_validation{metric=...})
def _set(metric: Metric, value, actor: str, /, **tags: str) -> None:
    tags = _tags(actor, **tags)
    key = (metric, tuple(sorted(tags.items())))
    if not _finite(value):  # Ray drops NaN/Inf samples: let the series lapse (non-finite losses are counted)
        _live.pop(key, None)
        return
    _ray_metric(metric).set(float(value), tags=tags)
    _live[key] = float(value)
    with _keeper_lock:
        if not _keeper:
            _keeper.append(threading.Thread(target=_keep_gauges_alive, name="ral-metrics-gauges", daemon=True))
            _keeper[0].start()


def _inc(metric: Metric, value, actor: str, /, **tags: str) -> None:
    if _finite(value) and value > 0:
        _ray_metric(metric).inc(float(value), tags=_tags(actor, **tags))


def _zero(metric: Metric, actor: str, /, **tags: str) -> None:
    """Export a counter's label set at 0: Ray's Counter.inc refuses 0, its recorder does not."""
    _ray_metric(metric)._record(0.0, tags=_tags(actor, **tags))


def _observe(metric: Metric, value, actor: str, /, **tags: str) -> None:
    if _finite(value):
        _ray_metric(metric).observe(float(value), tags=_tags(actor, **tags))


def _never_fails(fn: Callable) -> Callable:
    """Metrics must not break a training run: a recording error is logged, and training goes on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _enabled():
            return None
        try:
            return fn(*args, **kwargs)
        except Exception:
            log.warning("ral_dist.runtime.metrics.%s failed", fn.__name__, exc_info=True)
            return None

    return wrapper


# ---------------------------------------------------------------------------------------------- the API

@_never_fails
def count_start(actor: str) -> None:
    """Called in an actor's __init__: counts a restart when Ray reconstructed the actor after a failure."""
    import ray

    with warnings.catch_warnings():  # the property reads a deprecated attribute internally
        warnings.simplefilter("ignore")
        restarted = ray.get_runtime_context().was_current_actor_reconstructed
    if restarted:
        _inc(RESTARTS, 1, actor)
    else:
        _zero(RESTARTS, actor)
    _zero(BUSY, actor)


def timed(actor: str, record: Callable | None = None) -> Callable:
    """Decorates an actor's work method: its wall time counts as busy; ``record(result, self)`` runs after it."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            t0 = time.perf_counter()
            result = method(self, *args, **kwargs)
            _record_busy(actor, time.perf_counter() - t0)
            if record is not None:
                record(result, self)
            return result

        return wrapper

    return decorate


@_never_fails
def _record_busy(actor: str, seconds: float) -> None:
    _inc(BUSY, seconds, actor)


@_never_fails
def record_run_start(steps: int) -> None:
    """Called by the controller before its first step: the run's length, and its counters at 0."""
    a = "controller"
    _set(RUN_STEPS, steps, a)
    _zero(STEPS, a)
    _zero(SYNC_BYTES, a)
    for reason in ("prompt_unprocessable", "nonfinite_reward"):
        _zero(SKIPPED, a, reason=reason)
    _zero(BUSY, a)
    for queue in QUEUES:
        _set(QUEUE_DEPTH, 0, a, queue=queue)


@_never_fails
def record_step(record: dict, phases: PhaseTimes, terms: Iterable[str] = REWARD_TERMS,
                next_rollout: Iterable = ()) -> None:
    """Called by the controller after each step with the record it writes to metrics.jsonl, the step's phase times,
    the job's reward terms (built-in and custom) and the ObjectRefs of the next step's rollout (already launched, or
    [] after the last step)."""
    a = "controller"
    _set(STEP, record["step"], a)
    _inc(STEPS, 1, a)
    _set(POLICY_VERSION, record["policy_version"], a)
    _set(STALENESS, record.get("staleness_max"), a)
    _set(REWARD, record["reward_mean"], a, term="total")
    for term in terms:
        _set(REWARD, record.get(f"reward_{term}"), a, term=term)
    _set(ACCURACY, record["accuracy"], a)
    for qtype, by_type in record.get("per_type", {}).items():
        _set(ACCURACY_BY_TYPE, by_type["accuracy"], a, qtype=qtype)
        _set(REWARD_BY_TYPE, by_type["reward"], a, qtype=qtype)
        _inc(TRAJECTORIES_BY_TYPE, by_type["n"], a, qtype=qtype)
    _set(ON_TARGET, record.get("attention_on_target"), a)
    for phase in CONTROLLER_PHASES:
        _observe(PHASE_SECONDS, getattr(phases, f"{phase}_s"), a, phase=phase)
    _observe(SYNC_SECONDS, phases.sync_s, a)
    _inc(SYNC_BYTES, record.get("sync_bytes"), a)
    _inc(SKIPPED, record.get("prompts_skipped"), a, reason="prompt_unprocessable")
    _inc(SKIPPED, record.get("nonfinite_rewards"), a, reason="nonfinite_reward")
    record_queue(list(next_rollout))
    if "teacher_s" in record:  # distillation job: the step's teacher seconds, learner wait and teacher queue
        _observe(PHASE_SECONDS, record["teacher_s"], a, phase="teacher")
        _observe(PHASE_SECONDS, record.get("teacher_wait_s"), a, phase="teacher_wait")
        for queue in TEACHER_QUEUES:  # record keys teacher_queue_in_flight, ...
            _set(QUEUE_DEPTH, record.get("teacher_queue_" + queue.removeprefix("teacher_")), a, queue=queue)


@_never_fails
def record_queue(refs: list) -> None:
    """How much of the next step's rollout is still running, and how much waits, done, for the controller."""
    import ray

    ready, running = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False) if refs else ([], [])
    _set(QUEUE_DEPTH, len(running), "controller", queue="rollout_in_flight")
    _set(QUEUE_DEPTH, len(ready), "controller", queue="rollout_ready")


@_never_fails
def record_rollout(gen) -> None:
    """Called by a rollout worker with the ``Generation`` of one rollout call."""
    a = "rollout"
    _inc(GENERATED_TOKENS, int(gen.response_mask.sum()), a)
    _inc(ROLLOUT_SAMPLES, len(gen.texts), a)
    for phase in ROLLOUT_PHASES:
        _observe(PHASE_SECONDS, getattr(gen, "seconds", {}).get(phase), a, phase=phase)


@_never_fails
def record_reward(results: list, worker=None) -> None:
    """Called after a reward worker scored a batch (``RewardResult`` list)."""
    a = "reward"
    _inc(REWARD_SCORED, len(results), a)
    for term in dict.fromkeys((*REWARD_TERMS, *(t for r in results for t in r.terms))):  # built-ins, then custom
        _zero(REWARD_UNSCORED, a, term=term)
        _inc(REWARD_UNSCORED, sum(term in r.notes for r in results), a, term=term)
    for r in results:
        _observe(TRAJECTORY_SCORE, r.total, a, term="total")
        for term, value in r.terms.items():
            _observe(TRAJECTORY_SCORE, value, a, term=term)


@_never_fails
def record_learner(stats: LearnerStepStats, worker=None) -> None:
    """Called after ``Learner.train_step`` with its stats; rank 0 only (the stats are already all-reduced)."""
    if getattr(worker, "rank", 0) != 0:
        return
    a = "learner"
    for term, value in zip(LOSS_TERMS, (stats.loss, stats.policy_loss, stats.attn_loss), strict=True):
        _set(LOSS, value, a, term=term)
    _set(KL, stats.kl, a)
    _set(ATTN_JSD, stats.attn_jsd, a)
    _set(ATTN_GRAD_NORM, stats.attn_grad_norm, a)
    _set(ATTN_GRAD_SHARE, stats.attn_grad_share, a)
    if "reverse_kl" in stats.extra:  # distillation job
        _set(LOSS, stats.extra["reverse_kl"], a, term="reverse_kl")
        _set(TEACHER_ATTN_JSD, stats.extra["teacher_attn_jsd"], a)
    _set(CLIP_FRACTION, stats.clip_fraction, a)
    _zero(TRAINED_TOKENS, a)
    _inc(TRAINED_TOKENS, stats.n_tokens, a)
    _zero(UPDATES, a)
    _inc(UPDATES, stats.updates, a)
    _zero(SKIPPED, a, reason="nonfinite_loss")
    _inc(SKIPPED, stats.skipped_updates, a, reason="nonfinite_loss")


@_never_fails
def record_validation(record: dict, best_accuracy: float | None, alert_drop: float) -> None:
    """Called by the controller with each validation record it writes to metrics.jsonl."""
    a = "controller"
    for key in VAL_METRICS:
        _set(VALIDATION, record.get(key), a, metric=key)
    _set(VALIDATION, best_accuracy, a, metric="best_accuracy")
    _set(VALIDATION, alert_drop, a, metric="alert_drop")
    for qtype, by_type in record.get("per_type", {}).items():
        _set(VAL_ACCURACY_BY_TYPE, by_type.get("accuracy"), a, qtype=qtype)
