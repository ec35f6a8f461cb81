"""The run at a glance: progress, rewards, accuracy, KL, throughput and where each step's time goes."""

from __future__ import annotations

from ral_dist.runtime import metrics as m

from .common import RUN, WINDOW, Query, dashboard, graph, mean_per_event, single

UID = "ral-overview"


def _quantiles(term: str) -> list[Query]:
    bucket = f'{m.TRAJECTORY_SCORE.series}_bucket{{{RUN},term="{term}"}}'
    return [Query(f"histogram_quantile({q}, sum by (le, JobId) (rate({bucket}[{WINDOW}])))", f"p{round(q * 100)}")
            for q in (0.1, 0.5, 0.9)]


def build():
    steps_per_s = f"sum by (JobId) (rate({m.STEPS.series}{{{RUN}}}[{WINDOW}]))"
    step = f"max by (JobId) ({m.STEP.series}{{{RUN}}})"
    run_steps = f"max by (JobId) ({m.RUN_STEPS.series}{{{RUN}}})"
    progress = [
        single("Progress", "Completed steps over the steps the run is configured for.", "percentunit",
               Query(f"({step} + 1) / {run_steps}", "{{JobId}}")),
        single("Policy version", "The learner's policy version after the last update.", "none",
               Query(f"max by (JobId) ({m.POLICY_VERSION.series}{{{RUN}}})", "{{JobId}}")),
        single("Steps per minute", "Completed steps per minute over the window.", "none",
               Query(f"{steps_per_s} * 60", "{{JobId}}")),
        single("ETA", "Remaining steps at the window's step rate.", "s",
               Query(f"({run_steps} - {step} - 1) / {steps_per_s}", "{{JobId}}")),
    ]
    rewards = [
        graph("Reward terms (step mean)", "Mean of each reward term over the step's trajectories, and the weighted "
              "total the advantages use.", "none",
              Query(f"avg by (JobId, term) ({m.REWARD.series}{{{RUN}}})", "{{term}}")),
        graph("Accuracy", "Exact-match accuracy of the sampled responses (step mean).", "percentunit",
              Query(f"avg by (JobId) ({m.ACCURACY.series}{{{RUN}}})", "accuracy {{JobId}}")),
        graph("Total reward across trajectories", "Quantiles of the per-trajectory total reward over the window.",
              "none", *_quantiles("total")),
    ]
    by_type = [
        graph("Accuracy by question type", "Step mean accuracy (the task term) of each question type.",
              "percentunit", Query(f"avg by (JobId, qtype) ({m.ACCURACY_BY_TYPE.series}{{{RUN}}})", "{{qtype}}")),
        graph("Reward by question type", "Step mean total reward of each question type.", "none",
              Query(f"avg by (JobId, qtype) ({m.REWARD_BY_TYPE.series}{{{RUN}}})", "{{qtype}}")),
        graph("Trajectories per second by question type", "How the sampled data splits over the question types.",
              "none", Query(f"sum by (JobId, qtype) (rate({m.TRAJECTORIES_BY_TYPE.series}{{{RUN}}}[{WINDOW}]))",
                            "{{qtype}}")),
    ]
    policy = [
        graph("KL to the reference policy", "k3 estimate of KL(pi_theta || pi_ref), step mean.", "none",
              Query(f"avg by (JobId) ({m.KL.series}{{{RUN}}})", "KL {{JobId}}")),
        graph("Loss and its terms", "Total loss, clipped policy surrogate and attention term (RAL.md §3).", "none",
              Query(f"avg by (JobId, term) ({m.LOSS.series}{{{RUN}}})", "{{term}}")),
        graph("PPO clip fraction", "Share of response tokens whose probability ratio was clipped.", "percentunit",
              Query(f"avg by (JobId) ({m.CLIP_FRACTION.series}{{{RUN}}})", "clipped {{JobId}}")),
    ]
    throughput = [
        graph("Tokens per second", "Response tokens sampled by the rollout workers and trained on by the learner.",
              "none",
              Query(f"sum by (JobId) (rate({m.GENERATED_TOKENS.series}{{{RUN}}}[{WINDOW}]))", "sampled"),
              Query(f"sum by (JobId) (rate({m.TRAINED_TOKENS.series}{{{RUN}}}[{WINDOW}]))", "trained")),
        graph("Samples per second", "Responses sampled, and trajectories scored by the reward workers.", "none",
              Query(f"sum by (JobId) (rate({m.ROLLOUT_SAMPLES.series}{{{RUN}}}[{WINDOW}]))", "sampled"),
              Query(f"sum by (JobId) (rate({m.REWARD_SCORED.series}{{{RUN}}}[{WINDOW}]))", "scored")),
    ]
    controller_phases = f'{RUN},actor="controller",phase=~"rollout_wait|reward|learn|sync"'
    rollout_phases = f'{RUN},actor="rollout"'
    time = [
        graph("Seconds per step by phase", "Where the controller's step goes: waiting for rollouts (overlapped with "
              "learning in one_step_off), reward, learn, weight sync.", "s",
              Query(mean_per_event(m.PHASE_SECONDS.series, "phase", controller_phases), "{{phase}}"),
              stacked=True, bars=True),
        graph("Rollout: generation vs attention capture", "Seconds per rollout call on a worker: sampling, and the "
              "scoring pass that captures the attention policy and log-probs; and a step's whole rollout.", "s",
              Query(mean_per_event(m.PHASE_SECONDS.series, "phase", rollout_phases), "{{phase}}"),
              Query(mean_per_event(m.PHASE_SECONDS.series, "phase", f'{RUN},phase="rollout"'), "whole rollout")),
    ]
    return dashboard(UID, "ral_dist / overview", "An RL run at a glance (ral_dist.runtime.metrics).", [
        ("Progress", progress), ("Rewards and accuracy", rewards), ("Validation", _validation()),
        ("By question type", by_type), ("Policy", policy), ("Throughput", throughput), ("Time per step", time)])


def _validation() -> list:
    """Greedy validation on the val split during training (run.val_every); each gauge holds the last one's value."""

    def val(metric: str) -> str:
        return f'max by (JobId) ({m.VALIDATION.series}{{{RUN},metric="{metric}"}})'

    return [
        graph("Validation accuracy", "Greedy accuracy on the val split after the last validated step, its best so "
              "far, and the level under which alert RalValidationDrop fires (best - run.val_alert_drop).",
              "percentunit", Query(val("accuracy"), "accuracy {{JobId}}"),
              Query(val("best_accuracy"), "best {{JobId}}"),
              Query(f'{val("best_accuracy")} - {val("alert_drop")}', "alert below {{JobId}}")),
        graph("Validation: format, grounding, attention", "Format rate; the answer tokens' attention on the "
              "ground-truth region against its chance level (uniform attention); sparsity and consistency.",
              "percentunit", Query(f"avg by (JobId, metric) ({m.VALIDATION.series}{{{RUN},metric=~\"format_rate|"
                                   f'attention_on_target|target_fraction|sparsity|consistency"}})', "{{metric}}")),
        graph("Validation accuracy by question type", "Greedy accuracy per question type at the last validation.",
              "percentunit", Query(f"avg by (JobId, qtype) ({m.VAL_ACCURACY_BY_TYPE.series}{{{RUN}}})", "{{qtype}}")),
        single("Validation response length", "Mean tokens of the greedy answers at the last validation.", "none",
               Query(val("response_length"), "{{JobId}}")),
        single("Last validated step", "The step the last validation followed (-1: before training).", "none",
               Query(val("step"), "{{JobId}}")),
    ]
