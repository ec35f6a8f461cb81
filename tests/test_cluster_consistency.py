"""The worker groups of every rendered cluster can host the placement group of the job config its RayJob runs
(and the interactive RayCluster can too, at its autoscaling maximum); a config change that no longer fits fails
here, not on the cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cluster"))

import check_manifests as cm  # noqa: E402
import render  # noqa: E402

OVERLAYS = ["cpu", "gpu"]
RL_JOB = "ral-grpo-qwen25vl-7b"
DISTILL_JOB = "ral-distill-qwen25vl-32b-to-7b"
DISTILL_CONFIG = "jobs/configs/distill_qwen25vl_32b_to_7b.yaml"


def _jobs(overlay):
    docs = render.render(overlay)
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "RayJob"}, cluster


def _all_jobs():
    for overlay in OVERLAYS:
        jobs, _ = _jobs(overlay)
        for name, job in jobs.items():
            yield overlay, name, job


def _has_config(job) -> bool:
    path = cm.config_path(cm.parse_entrypoint(job["spec"]["entrypoint"]))
    return path is not None and path.exists()


CHECKED = [(o, n) for o, n, j in _all_jobs() if _has_config(j)]


def test_what_is_checked():
    """Every RayJob is checked: the RL job on both overlays, the distillation job on the GPU overlay (the CPU
    overlay has no distillation job)."""
    unchecked = sorted({name for o, name, job in _all_jobs() if not _has_config(job)})
    assert unchecked == []
    assert ("cpu", RL_JOB) in CHECKED and ("gpu", RL_JOB) in CHECKED and ("gpu", DISTILL_JOB) in CHECKED
    jobs, _ = _jobs("gpu")
    ref = cm.parse_entrypoint(jobs[DISTILL_JOB]["spec"]["entrypoint"])
    assert (ref.script, ref.config) == ("jobs/ral_distill.py", DISTILL_CONFIG)
    assert (ROOT / ref.script).exists()


def test_the_teacher_needs_its_group():
    """The distillation job's teacher bundles are checked like any role: too many for the teacher pods fail."""
    jobs, cluster = _jobs("gpu")
    problems = cm.job_problems(jobs[DISTILL_JOB], ["teacher.num_workers=3"], interactive=cluster)
    assert problems and all(" teacher bundles" in p for p in problems), problems


@pytest.mark.parametrize("overlay, name", CHECKED)
def test_config_fits_the_cluster(overlay, name):
    jobs, cluster = _jobs(overlay)
    problems = cm.job_problems(jobs[name], interactive=cluster)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("overlay, override, role", [
    ("gpu", "rollout.num_workers=16", "rollout"),
    ("gpu", "rollout.gpus_per_worker=2", "rollout"),
    ("gpu", "learner.num_ranks=5", "learner"),
    ("gpu", "learner.gpus_per_rank=2", "learner"),
    ("gpu", "learner.cpus_per_rank=9", "learner"),
    ("gpu", "reward.cpus_per_worker=4", "reward"),
    ("cpu", "rollout.num_workers=16", "rollout"),
    ("cpu", "rollout.gpus_per_worker=1", "rollout"),
    ("cpu", "learner.num_ranks=5", "learner"),
])
def test_a_config_that_no_longer_fits_fails(overlay, override, role):
    jobs, cluster = _jobs(overlay)
    problems = cm.job_problems(jobs[RL_JOB], [override], interactive=cluster)
    assert problems, f"--set {override} should not fit the {overlay} cluster"
    assert all(f" {role} bundles" in p for p in problems), problems
    assert any("on RayCluster/ral-dist" in p for p in problems)   # the interactive cluster is checked too


def test_a_config_that_still_fits_passes():
    jobs, cluster = _jobs("gpu")
    assert cm.job_problems(jobs[RL_JOB], ["rollout.num_workers=3", "reward.num_workers=2"], interactive=cluster) == []


def test_the_sft_warm_start_needs_its_train_workers():
    jobs, _ = _jobs("cpu")
    config = cm.load_job_config(cm.parse_entrypoint(jobs[RL_JOB]["spec"]["entrypoint"]))
    assert config.model.checkpoint.startswith("sft:")
    groups = [cm.Group("rollout", 1, {"CPU": 0.5, "GPU": 0}), cm.Group("learner", 1, {"CPU": 1, "GPU": 0}),
              cm.Group("reward", 1, {"CPU": 0.5, "GPU": 0})]
    problems = cm.fit_problems(config, groups, "tiny")
    assert problems and all("SFT warm start" in p for p in problems), problems   # the RL roles themselves fit


def test_entrypoint_parsing():
    ref = cm.parse_entrypoint("python jobs/ral_grpo.py --config=a.yaml --set x.y=1 --steps 5 --run-dir /r "
                              "--set 'z=two words'")
    assert (ref.script, ref.config, ref.overrides) == ("jobs/ral_grpo.py", "a.yaml",
                                                       ["x.y=1", "run.steps=5", "z=two words"])
    with pytest.raises(ValueError):
        cm.parse_entrypoint("bash -c true")
    with pytest.raises(ValueError):
        cm.parse_entrypoint("python jobs/ral_grpo.py --config")
    with pytest.raises(ValueError, match="unknown job script"):
        cm.load_job_config(cm.parse_entrypoint("python jobs/other.py --config x.yaml"))


def test_ray_pod_resources_as_kuberay_derives_them():
    def group(params, resources):
        return {"rayStartParams": params, "template": {"spec": {"containers": [{"resources": resources}]}}}

    assert cm.ray_pod_resources(group({}, {"limits": {"cpu": "500m", "nvidia.com/gpu": 2}})) == {"CPU": 1, "GPU": 2}
    assert cm.ray_pod_resources(group({}, {"requests": {"cpu": "3"}})) == {"CPU": 3, "GPU": 0}
    assert cm.ray_pod_resources(group({"num-cpus": "0", "num-gpus": "1"}, {"limits": {"cpu": "8"}})) == \
        {"CPU": 0, "GPU": 1}
    assert cm.ray_pod_resources(group({"resources": '"{\\"rollout_slot\\": 4, \\"x\\": 0.5}"'}, {})) == \
        {"CPU": 0, "GPU": 0, "rollout_slot": 4, "x": 0.5}
    assert cm.quantity("2k") == 2000 and cm.quantity(3) == 3
    with pytest.raises(ValueError):
        cm.quantity("lots")
    with pytest.raises(ValueError):
        cm.parse_custom_resources('"[1, 2]"')


def test_pack():
    assert cm.pack([{"GPU": 1}] * 4, [{"GPU": 4}]) is None
    assert cm.pack([{"GPU": 1}] * 5, [{"GPU": 4}]) is not None
    assert cm.pack([{"GPU": 2}] * 2, [{"GPU": 3}, {"GPU": 1}]) is not None   # no bundle is split over pods
    assert cm.pack([{"CPU": 0.1}] * 10, [{"CPU": 1}]) is None                # float sums


class _Section(BaseModel):
    num_workers: int = 4
    cpus_per_worker: float = 1
    gpus_per_worker: float = 1
    custom_resources: dict[str, float] = Field(default_factory=dict)


class _Config(BaseModel):
    rollout: _Section = Field(default_factory=_Section)
    teacher: _Section = Field(default_factory=_Section)


def test_custom_resources_and_extra_roles_are_packed():
    """Once the controller asks for <group>_slot (and a distill config adds a teacher section), the check
    counts them: a pod's slots bound how many bundles it takes, whatever its CPUs and GPUs."""
    pods = [cm.Group("rollout", 1, {"CPU": 32, "GPU": 8, "rollout_slot": 4}),
            cm.Group("teacher", 1, {"CPU": 16, "GPU": 4, "teacher_slot": 2})]
    config = _Config(rollout=_Section(custom_resources={"rollout_slot": 1}),
                     teacher=_Section(num_workers=2, gpus_per_worker=2, custom_resources={"teacher_slot": 1}))
    assert cm.fit_problems(config, pods, "x") == []
    config.rollout.num_workers = 5   # 5 x 1 GPU would fit 8 GPUs, but the pod has 4 rollout slots
    assert any("rollout bundles" in p for p in cm.fit_problems(config, pods, "x"))
    config = _Config(teacher=_Section(num_workers=3, gpus_per_worker=2))
    assert any("teacher bundles" in p for p in cm.fit_problems(config, pods, "x"))
    assert any("no worker group 'teacher'" in p for p in cm.fit_problems(config, pods[:1], "x"))


def test_cli(capsys):
    assert cm.main(["cpu", "gpu"]) == 0
    out = capsys.readouterr()
    assert "cpu: ok" in out.out and "gpu: ok" in out.out


def test_the_labels_a_config_asks_for_exist_on_a_group_with_the_resources():
    """The shipped GPU configs pin every role to its worker group by ray.io/node-group; a selector no group
    carries, or one whose groups lack the resources, fails naming placement.<role>.node_labels / the role."""
    jobs, cluster = _jobs("gpu")
    groups = cm.cluster_groups(jobs[RL_JOB]["spec"]["rayClusterSpec"], at_max=False)
    assert {g.name: g.labels["ray.io/node-group"] for g in groups} == {g.name: g.name for g in groups}
    config = cm.load_job_config(cm.parse_entrypoint(jobs[RL_JOB]["spec"]["entrypoint"]))
    assert config.placement.rollout.node_labels == {"ray.io/node-group": "rollout"}
    assert cm.fit_problems(config, groups, "x") == []
    moved = config.model_copy(deep=True)
    moved.placement.rollout.node_labels = {"ray.io/node-group": "rollouts"}          # a typo
    assert any("placement.rollout.node_labels" in p and "match no worker group" in p
               for p in cm.fit_problems(moved, groups, "x"))
    moved.placement.rollout.node_labels = {"ray.io/node-group": "reward"}            # CPU pods: no GPU there
    assert any("4 rollout bundles" in p and "'reward'" in p for p in cm.fit_problems(moved, groups, "x"))
    moved.placement.rollout.node_labels = {"ray.io/node-group": "in(rollout,learner)"}  # Ray's operators
    assert cm.fit_problems(moved, groups, "x") == []
    assert not cm.selector_matches({"ray.io/node-group": "!in(rollout,learner)"}, {"ray.io/node-group": "rollout"})
    assert cm.selector_matches({"zone": "!a"}, {"ray.io/node-group": "rollout"})      # absent key: "not a" holds
    assert cm.group_labels({"groupName": "g", "labels": {"a": "1"}, "rayStartParams": {"labels": '"b=2,c=3"'}}) == \
        {"ray.io/node-group": "g", "a": "1", "b": "2", "c": "3"}
