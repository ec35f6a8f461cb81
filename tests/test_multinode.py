"""Beyond one machine, on one machine: a head and two worker raylets (own CPUs, labels and temp dirs), the tiny job
through `ray job submit`, each role placed by `placement.<role>.node_labels`, then the nodes holding rollout workers
and learner ranks lost mid-run. One cluster for every case (start-up is the expensive part)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from multinode import MultiNodeCluster, cluster_env, records
from tiny_job import TINY_JOB

from ral_dist.paths import torch_extensions_dir
from ral_dist.runtime.deepspeed_setup import prebuild_ops

OP = "deepspeed_shm_comm"
PLACEMENT = {
    "learner": {"strategy": "PACK", "node_labels": {"ray.io/node-group": "learner"}},
    # any node but the learners': spread, one worker per node, so a lost node takes one of them
    "rollout": {"strategy": "SPREAD", "node_labels": {"ray.io/node-group": "!learner"}},
    "reward": {"node_labels": {"ray.io/node-group": "head"}},
    "wait_timeout_s": 120,
}
RECOVERING = "recovering from the last checkpoint"
STEPS = 12  # long enough that the learner node is lost with steps still to go


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """head (2 CPUs, group head: reward workers, the driver), learner (1 CPU), rollout (1 CPU). DeepSpeed's
    JIT ops come from a copy of this environment's, with torch's build lock planted as a killed build leaves it."""
    extensions = tmp_path_factory.mktemp("ext")
    if not (Path(torch_extensions_dir()) / OP / f"{OP}.so").exists():  # `make setup` builds it; a bare venv may not
        prebuild_ops()
    shutil.copytree(Path(torch_extensions_dir()) / OP, extensions / OP,
                    ignore=shutil.ignore_patterns("lock", ".ral-build.flock", "ral_build.json"))
    (extensions / OP / "lock").touch()
    c = MultiNodeCluster(cluster_env(TORCH_EXTENSIONS_DIR=str(extensions)))
    try:
        c.start_head(2, "head")
        c.add_node("learner", 1, "learner")
        c.add_node("rollout", 1, "rollout")
        yield c
    finally:
        c.stop_all()


def _config(tmp_path: Path, name: str, **overrides) -> Path:
    cfg = {k: dict(v) for k, v in TINY_JOB.items()}
    cfg["run"].update(steps=STEPS, checkpoint_every=2, heatmap_every=100, heatmap_prompts=0, timeout_s=120)
    cfg["placement"] = PLACEMENT
    for section, values in overrides.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _assert_accounted(recs: list[dict]) -> None:
    assert [r["step"] for r in recs] == list(range(STEPS))
    for r in recs:  # every scheduled prompt trained once or skipped with a reason; weights where they belong
        assert r["prompts_scheduled"] == 2 == r["prompts_trained"] + r["prompts_skipped"]
        assert r["n_trajectories"] == 3 * r["prompts_trained"] and r["weights_in_sync"]


def test_a_role_without_its_nodes_fails_naming_it(cluster, tmp_path):
    config = _config(tmp_path, "nolabel", placement={"learner": {"node_labels": {"ray.io/node-group": "gpu-learner"}},
                                                      "wait_timeout_s": 5})
    proc = cluster.submit("--config", str(config), "--run-dir", str(tmp_path / "nolabel"), timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert ("timed out after 5s waiting for resources of the learner ranks (learner): 2 x {'CPU': 0.5} (PACK) "
            "on nodes labelled {'ray.io/node-group': 'gpu-learner'}") in out, out[-3000:]


def test_roles_on_their_nodes_then_lost_nodes(cluster, tmp_path):
    # 1. An uninterrupted run: every role where the config put it, past the stale build lock; its run directory
    # given as a file:// URL (storage every node mounts), checkpoints written there by the learners' node.
    straight = tmp_path / "straight"
    job = cluster.submit_async("--config", str(_config(tmp_path, "straight")), "--run-dir", f"file://{straight}")
    assert cluster.wait(job) == "SUCCEEDED", cluster.logs(job)[-4000:]
    assert "removed a stale JIT build lock" in cluster.logs(job)
    placed = cluster.actors_by_role("straight")
    assert placed["learner"] == ["learner", "learner"] and placed["reward"] == ["head", "head"]
    assert sorted(placed["rollout"]) == ["head", "rollout"]  # SPREAD over the nodes that are not learners'
    _assert_accounted(records(straight))
    assert (straight / "checkpoints" / f"step_{STEPS - 1:06d}" / "controller_state.json").exists()

    # 2. The same run, losing the rollout node after step 1 and the learner node after step 4.
    faults = tmp_path / "faults"
    job = cluster.submit_async("--config", str(_config(tmp_path, "faults")), "--run-dir", str(faults))
    cluster.wait_for(lambda: len(records(faults)) >= 1, "step 0")
    cluster.kill_node("rollout")  # mid-step: step 1's rollouts are in flight
    # The worker it held is restarted by Ray on the remaining node and its rollout retried there. (Had the lost
    # node held the only copy of a finished chunk the learners still needed, the step would fail and the run
    # recover from its checkpoint instead: accepted, and told apart below.)
    # (polled from files only: the tiny job's steps take about a second)
    cluster.wait_for(lambda: any(r.get("rollout_retries") for r in records(faults)) or
                     RECOVERING in cluster.job_log(job), "a rollout on a restarted worker")
    recoveries = cluster.job_log(job).count(RECOVERING)
    cluster.wait_for(lambda: len(records(faults)) >= 4, "step 3 (its checkpoint written)")
    cluster.kill_node("learner")
    # the step fails, the job waits (bounded) for learner resources: a new node, as KubeRay restarts a pod
    cluster.wait_for(lambda: cluster.job_log(job).count(RECOVERING) > recoveries, "the recovery to start")
    cluster.add_node("learner2", 1, "learner")
    assert cluster.wait(job) == "SUCCEEDED", cluster.logs(job)[-4000:]
    logs = cluster.logs(job)
    assert recoveries or "ran on a worker Ray had restarted" in logs
    if not recoveries:  # the restarted rollout worker's latest node: the remaining one
        assert cluster.actors_by_role("faults")["rollout"] == ["head", "head"]
    final = cluster.actors_by_role(f"faults-r{logs.count(RECOVERING)}")  # the last recovery's actors
    assert final["learner"] == ["learner2", "learner2"] and set(final["rollout"]) == {"head"}

    a, b = records(straight), records(faults)
    _assert_accounted(b)  # steps redone after the recovery are recorded once
    for ra, rb in zip(a, b, strict=True):  # same data order, sampling and updates as the uninterrupted run
        for key in ("reward_mean", "accuracy", "loss", "kl", "attn_loss", "attn_jsd", "policy_loss"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)
