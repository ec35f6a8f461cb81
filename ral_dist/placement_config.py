"""The ``placement:`` section: which nodes of a Ray cluster each role's actors may use, and how they spread there.

Each role group (learners, rollout workers, reward workers, the distillation teachers) gets its own placement group
(`ral_dist.runtime.placement`): its strategy, and a Ray label selector that every one of its bundles must match.
On KubeRay every pod carries its worker group's name as the label ``ray.io/node-group``, so
``placement.rollout.node_labels: {ray.io/node-group: rollout}`` pins the rollout workers to that worker group;
`ray start --labels k=v` sets labels on a node by hand. (A separate module keeps config.py small.)
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Strategy = Literal["PACK", "SPREAD", "STRICT_SPREAD"]
ROLES = ("learner", "rollout", "reward", "teacher")
NODE_GROUP_LABEL = "ray.io/node-group"  # KubeRay's label of every pod of a worker group


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RolePlacement(_Strict):
    """Where one role's actors go."""

    strategy: Strategy | None = Field(
        None, description="how this role's bundles spread over the nodes that match node_labels: PACK (as few nodes "
                          "as possible), SPREAD (as many as possible), STRICT_SPREAD (each on its own node, or the "
                          "role waits); None: placement.strategy")
    node_labels: dict[str, str] = Field(
        default_factory=dict, description="Ray label selector every bundle of this role must match, e.g. "
                                          "{ray.io/node-group: rollout}; a value may use Ray's operators: 'a', '!a', "
                                          "'in(a,b)', '!in(a,b)'. Empty: any node")

    @field_validator("node_labels")
    @classmethod
    def _ray_label_syntax(cls, labels: dict[str, str]) -> dict[str, str]:
        from ray._private.label_utils import (
            validate_label_selector,  # Ray's own rules, as ray.init will apply them
        )

        problem = validate_label_selector(labels)
        if problem:
            raise ValueError(problem)
        return labels


class PlacementConfig(_Strict):
    """Per role group: a placement group with its strategy and node labels; and how long to wait for it."""

    strategy: Strategy = Field("PACK", description="the strategy of every role group that does not set its own "
                                                   "(PACK: one node when it fits, as before roles could be placed)")
    learner: RolePlacement = Field(default_factory=RolePlacement, description="the learner ranks (DeepSpeed)")
    rollout: RolePlacement = Field(default_factory=RolePlacement, description="the rollout workers")
    reward: RolePlacement = Field(default_factory=RolePlacement, description="the reward workers")
    teacher: RolePlacement = Field(default_factory=RolePlacement,
                                   description="the TeacherActors (distillation jobs only; ignored by the RL job)")
    wait_timeout_s: float | None = Field(
        None, gt=0, description="longest wait for a role's resources (at start, and after a lost node for its "
                                "replacement); the error names the role, its bundles and labels. None: run.timeout_s")

    def role(self, name: str) -> tuple[str, dict[str, str]]:
        """(strategy, node labels) of one role group."""
        role = getattr(self, name)
        return role.strategy or self.strategy, dict(role.node_labels)
