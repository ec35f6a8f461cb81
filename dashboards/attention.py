"""The attention policy: how far the learner moves it (JSD, loss, gradient) and where the answers look."""

from __future__ import annotations

from ral_dist.runtime import metrics as m

from .common import RUN, WINDOW, Query, dashboard, graph, mean_per_event

UID = "ral-attention"


def build():
    learner = [
        graph("Attention JSD (p_theta vs p_old)", "Mean JSD between the learner's attention policy and the "
              "behaviour policy's; 0 on the first update of a step (RAL.md §3).", "none",
              Query(f"avg by (JobId) ({m.ATTN_JSD.series}{{{RUN}}})", "JSD {{JobId}}")),
        graph("Attention loss", "A · JSD averaged over response tokens.", "none",
              Query(f'avg by (JobId) ({m.LOSS.series}{{{RUN},term="attention"}})', "L_attn {{JobId}}")),
        graph("Attention-term gradient norm", "L2 norm of the attention term's own gradient, on the steps that "
              "measure it (learner.attn_grad_norm_every).", "none",
              Query(f"avg by (JobId) ({m.ATTN_GRAD_NORM.series}{{{RUN}}})", "grad norm {{JobId}}")),
        graph("Attention-term gradient share", "The attention term's gradient norm over the whole update's: how "
              "much of the step the attention policy steers.", "percentunit",
              Query(f"avg by (JobId) ({m.ATTN_GRAD_SHARE.series}{{{RUN}}})", "share {{JobId}}")),
        graph("Learner updates per step", "The attention term acts only from the 2nd update of a rollout batch "
              "(RAL.md §3): below 2, RAL is plain GRPO.", "none",
              Query(f"sum by (JobId) (increase({m.UPDATES.series}{{{RUN}}}[{WINDOW}])) / "
                    f"sum by (JobId) (increase({m.STEPS.series}{{{RUN}}}[{WINDOW}]))", "updates {{JobId}}")),
    ]
    bucket = f'{m.TRAJECTORY_SCORE.series}_bucket{{{RUN},term=~"sparsity|consistency"}}'
    rollouts = [
        graph("Sparsity and consistency (step mean)", "Reward terms from the rollout attention maps (RAL.md §4): "
              "1 - normalised visual entropy, and agreement between answer and question attention.", "none",
              Query(f'avg by (JobId, term) ({m.REWARD.series}{{{RUN},term=~"sparsity|consistency"}})', "{{term}}")),
        graph("Visual attention entropy (normalised)", "Mean entropy of the answer's attention over visual tokens "
              "divided by ln |V|: 1 - sparsity.", "none",
              Query(f'1 - avg by (JobId) ({m.REWARD.series}{{{RUN},term="sparsity"}})', "entropy {{JobId}}")),
        graph("Attention on target", "Share of the answer tokens' visual attention inside the ground-truth region "
              "(samples that have one).", "percentunit",
              Query(f"avg by (JobId) ({m.ON_TARGET.series}{{{RUN}}})", "on target {{JobId}}")),
        graph("Spread across trajectories", "Median and 10-90 % range of sparsity and consistency over the "
              "window's trajectories.", "none",
              *[Query(f"histogram_quantile({q}, sum by (le, term) (rate({bucket}[{WINDOW}])))",
                      f"{{{{term}}}} p{round(q * 100)}") for q in (0.1, 0.5, 0.9)]),
        graph("Attention terms not computed", "Trajectories whose sparsity or consistency could not be computed "
              "(scored 0) over the window.", "none",
              Query(f'sum by (term) (increase({m.REWARD_UNSCORED.series}{{{RUN},term=~"sparsity|consistency"}}'
                    f"[{WINDOW}]))", "{{term}}")),
    ]
    teacher = [
        graph("Student-teacher divergence", "Distillation job (RAL.md §5): mean JSD between the student's and the "
              "teacher's attention policies, and the reverse KL on the response tokens.", "none",
              Query(f"avg by (JobId) ({m.TEACHER_ATTN_JSD.series}{{{RUN}}})", "attention JSD {{JobId}}"),
              Query(f'avg by (JobId) ({m.LOSS.series}{{{RUN},term="reverse_kl"}})', "reverse KL {{JobId}}")),
        graph("Teacher seconds per step", "Teacher compute over the step's rollout chunks, and how long the "
              "learners waited for its targets (0 when the teacher kept up).", "s",
              Query(mean_per_event(m.PHASE_SECONDS.series, "phase", f'{RUN},phase=~"teacher|teacher_wait"'),
                    "{{phase}}")),
        graph("Teacher queue", "Teacher calls running, done but not yet consumed by the learners, and waiting "
              "for a slot (teacher.queue_size) when the learners start a step.", "none",
              Query(f'max by (JobId, queue) ({m.QUEUE_DEPTH.series}{{{RUN},queue=~"teacher_.*"}})', "{{queue}}")),
    ]
    return dashboard(UID, "ral_dist / attention", "The attention policy of RAL.md §1 during training.", [
        ("Learner: the attention term", learner), ("Rollouts: where the answers look", rollouts),
        ("Distillation: the teacher", teacher)])
