"""The distillation job's config (jobs/ral_distill.py): the RL job's tree plus the ``teacher:`` and ``distill:``
sections (RAL.md §5). A separate module keeps config.py small."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from ral_dist.config import LearnerConfig, RLJobConfig, Strict


class TeacherConfig(Strict):
    """The frozen teacher of on-policy (attention) distillation (RAL.md §5) and its actors."""

    family: Literal["qwen2_5_vl", "qwen2_vl", "idefics3"] = Field(
        "qwen2_5_vl", description="family of a tiny teacher (a checkpoint's own config.json decides otherwise); "
                                  "must be the student's")
    checkpoint: str | None = Field(
        None, description="Hugging Face checkpoint dir of a larger model of the student's family, or sft:CONFIG "
                          "(the cached SFT checkpoint of that config, trained if missing); None builds a random "
                          "tiny model (tests)")
    tiny: dict[str, Any] = Field(default_factory=dict,
                                 description="overrides of a random tiny teacher's config, e.g. {text: {hidden_size: 192}}")
    seed: int = Field(1, description="initialisation seed of a random tiny teacher")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="the teacher's weights and forward")
    num_workers: int = Field(1, ge=1, description="TeacherActors; rollout chunks are spread over them round robin")
    cpus_per_worker: float = Field(0.25, gt=0, description="CPUs of each TeacherActor's placement-group bundle")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per TeacherActor; with more than one the model is "
                                                        "split over them (accelerate's device map)")
    batch_size: int = Field(8, ge=1, description="trajectories per teacher forward pass")
    top_k: int | None = Field(None, ge=1, description="the teacher token distribution sent to the learners: None = "
                                                      "full log-probs over the vocabulary; k = its top-k log-probs "
                                                      "(the rest is one residual bucket, 1 - their mass)")
    attention_wire_dtype: Literal["float16", "float32"] = Field(
        "float32", description="dtype of the teacher's attention rows in the object store")
    queue_size: int = Field(4, ge=1, description="teacher calls (one per rollout chunk) submitted and not yet "
                                                 "consumed by the learners, at most; further chunks wait for a slot "
                                                 "(back-pressure). At least rollout.num_workers (one step's chunks)")
    audit_steps: int = Field(0, ge=0, description="the first N steps' trajectories and teacher targets are saved "
                                                  "to RUN_DIR/teacher_audit/ for offline checks (tests)")


class DistillConfig(Strict):
    """Weights of the distillation terms added to the student's GRPO loss (RAL.md §5)."""

    mu: float = Field(1.0, ge=0, description="weight of reverse KL(student || teacher) on the response tokens "
                                             "(paper silent; project default)")
    gamma_attn: float = Field(0.5, ge=0, description="weight of the mean JSD(student attention || teacher "
                                                     "attention) over the response rows, no advantage weighting; "
                                                     "0 = on-policy KD, the baseline (paper: 0.05, 0.5, 1)")


class DistillJobConfig(RLJobConfig):
    """jobs/ral_distill.py: the RL job's student side plus a teacher; learner.lambda_attn defaults to 0 (GRPO)."""

    learner: LearnerConfig = Field(default_factory=lambda: LearnerConfig(lambda_attn=0.0),
                                   description="the student's learners; lambda_attn (the RAL term) defaults to 0")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _queue_holds_a_step(self) -> DistillJobConfig:
        if self.teacher.queue_size < self.rollout.num_workers:
            # the learners consume a whole step's chunks at once: a smaller queue could never hold them all
            raise ValueError(f"teacher.queue_size ({self.teacher.queue_size}) must be >= rollout.num_workers "
                             f"({self.rollout.num_workers}), the teacher calls of one step")
        return self

    # The student's rows are always computed: the teacher's targets are checked against their shape, and the
    # attention distillation term (distill.gamma_attn) reads them.
    @property
    def learner_captures(self) -> bool:
        return True

    @property
    def rollout_captures(self) -> bool:
        return True
