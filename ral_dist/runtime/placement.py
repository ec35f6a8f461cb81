"""One placement group per role group, on the nodes the config's labels select, waited for with a bound.

Why a group per role and not one for the job: Ray gives a placement group one strategy, and each role wants its
own (learner ranks packed beside each other for their collectives, rollout workers spread over the GPU nodes);
per-bundle label selectors then pin each role to its worker group (KubeRay's ``ray.io/node-group``). When a node
dies, Ray reschedules the bundles it held onto nodes that still match, or keeps them pending until a replacement
node joins (a KubeRay pod restarted): restartable actors come back in their bundles.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ral_dist.placement_config import PlacementConfig

ROLE_NAMES = {"learner": "learner ranks", "rollout": "rollout workers", "reward": "reward workers",
              "teacher": "teachers"}


def bundle(cpus: float, gpus: float = 0) -> dict:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def _describe(role: str, bundles: list[dict], strategy: str, labels: dict) -> str:
    shapes = sorted({tuple(sorted(b.items())) for b in bundles})
    what = " + ".join(f"{sum(1 for b in bundles if tuple(sorted(b.items())) == s)} x {dict(s)}" for s in shapes)
    where = f"on nodes labelled {labels}" if labels else "on any node"
    return f"the {ROLE_NAMES.get(role, role)} ({role}): {what} ({strategy}) {where}"


def _cluster_nodes() -> str:
    """Each alive node's labels and free resources, for an error that says why nothing fits."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    from ray._private.state import available_resources_per_node

    avail = available_resources_per_node() if alive else {}
    rows = []
    for n in alive:
        labels = {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/") or
                  k == "ray.io/node-group"}
        free = {k: round(v, 2) for k, v in avail.get(n["NodeID"], {}).items() if k in ("CPU", "GPU") or
                not k.startswith(("node:", "memory", "object_store", "bundle_group", "CPU_group", "GPU_group"))}
        rows.append(f"{n['NodeID'][:8]} labels {labels} free {free}")
    return "; ".join(rows) or "no alive node"


@dataclass
class RolePlacements:
    """The job's placement groups, by role; `on` gives an actor's scheduling options in one of them."""

    groups: dict[str, PlacementGroup] = field(default_factory=dict)

    def on(self, role: str, index: int) -> dict:
        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(self.groups[role],
                                                                        placement_group_bundle_index=index)}

    def remove(self) -> None:
        for pg in self.groups.values():
            remove_placement_group(pg)
        self.groups.clear()


def place_roles(roles: list[tuple[str, list[dict]]], cfg: PlacementConfig, timeout_s: float) -> RolePlacements:
    """A placement group per (role, bundles), all requested at once, then each waited for within one deadline.
    A role whose resources do not come in time fails with a `TimeoutError` naming it, its bundles and labels, and
    what every alive node has free; the groups already made are removed."""
    placed = RolePlacements()
    for role, bundles in roles:
        strategy, labels = cfg.role(role)
        placed.groups[role] = placement_group(bundles, strategy=strategy,
                                              bundle_label_selector=[labels] * len(bundles) if labels else None)
    deadline = time.time() + timeout_s
    for role, bundles in roles:
        ready, _ = ray.wait([placed.groups[role].ready()], timeout=max(0.0, deadline - time.time()))
        if not ready:
            strategy, labels = cfg.role(role)
            cluster = _cluster_nodes()
            placed.remove()
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for resources of "
                               f"{_describe(role, bundles, strategy, labels)}; alive nodes: {cluster} "
                               "(placement.wait_timeout_s bounds this wait)")
    return placed
