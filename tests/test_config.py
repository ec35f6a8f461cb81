"""The config tree: strict validation that names the field, YAML + --set overrides, shipped configs load."""

from pathlib import Path

import pytest

from ral_dist.config import ConfigError, RLJobConfig, SFTJobConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def test_shipped_sft_config_loads_and_overrides_apply():
    cfg = load_config(SFTJobConfig, CONFIGS / "sft_tiny_cpu.yaml", ["train.steps=7", "data.task.grid=3"])
    assert cfg.train.steps == 7 and cfg.data.task.grid == 3
    assert cfg.model.family == "qwen2_5_vl"


@pytest.mark.parametrize(("override", "field"), [
    ("train.stepz=3", "train.stepz"),
    ("train.lr=fast", "train.lr"),
    ("model.family=llava", "model.family"),
    ("data.task.grid=9", "data.task.grid"),
    ("train.zero_stage=4", "train.zero_stage"),
])
def test_bad_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(SFTJobConfig, CONFIGS / "sft_tiny_cpu.yaml", [override])


def test_yaml_never_evaluates_code(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(SFTJobConfig, bad)


def test_malformed_override_is_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(SFTJobConfig, None, ["train.steps"])


@pytest.mark.parametrize(("override", "message"), [
    ("attention.layers=[]", r"attention\.layers:.*at least 1"),
    ("attention.layers=[0,-1,0]", r"attention\.layers:.*names a layer twice"),
    ("attention.layers=[last]", r"attention\.layers\.0:"),
    ("rollout.top_p=0.9", r"rollout\.top_p \(0\.9\) < 1 needs learner\.old_policy=recompute"),
])
def test_bad_attention_and_sampling_settings_fail_naming_the_field(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RLJobConfig, None, [override])
    assert load_config(RLJobConfig, None, ["rollout.top_p=0.9", "learner.old_policy=recompute"]).rollout.top_p == 0.9


@pytest.mark.parametrize(("override", "field"), [
    ("placement.strategy=STRICT_PACK", "placement.strategy"),
    ("placement.rollout.strategy=EVERYWHERE", "placement.rollout.strategy"),
    ("placement.learner.node_labels={'bad key!': learners}", "placement.learner.node_labels"),
    ("placement.reward.node_labels={ray.io/node-group: '!!cpu'}", "placement.reward.node_labels"),
    ("placement.rollout.nodes=2", "placement.rollout.nodes"),
    ("placement.wait_timeout_s=0", "placement.wait_timeout_s"),
])
def test_bad_placement_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(RLJobConfig, CONFIGS / "tiny_cpu.yaml", [override])


def test_placement_per_role_with_label_operators():
    from ral_dist.distill_config import DistillJobConfig

    cfg = load_config(DistillJobConfig, None, ["placement.strategy=SPREAD", "placement.learner.strategy=PACK",
                                               "placement.rollout.node_labels={ray.io/node-group: 'in(gpu,spare)'}",
                                               "placement.teacher.node_labels={ray.io/node-group: '!cpu'}"])
    assert cfg.placement.role("learner") == ("PACK", {})
    assert cfg.placement.role("rollout") == ("SPREAD", {"ray.io/node-group": "in(gpu,spare)"})
    assert cfg.placement.role("teacher") == ("SPREAD", {"ray.io/node-group": "!cpu"})


def test_run_dir_as_a_path_or_a_file_url():
    from ral_dist.runtime.run_dir import run_path

    assert run_path("runs/x").path == Path("runs/x") and run_path("/a/b").path == Path("/a/b")
    assert run_path("file:///shared/runs/x").path == Path("/shared/runs/x")
    assert run_path("file://localhost/shared/x").url is None
    with pytest.raises(ConfigError, match="not on host 'nas'"):
        run_path("file://nas/runs/x")


@pytest.mark.parametrize("layers, ok", [("[-4]", True), ("[0, 3]", True), ("[4]", False), ("[-5]", False)])
def test_attention_layers_are_checked_against_the_model_before_ray(layers, ok):
    """The tiny model has 4 decoder layers; a layer it lacks stops the job in the driver (`resolve_student` runs
    before Ray is connected to), naming the setting."""
    from ral_dist.driver import resolve_student

    cfg = load_config(RLJobConfig, CONFIGS / "tiny_cpu.yaml", ["model.checkpoint=null", f"attention.layers={layers}"])
    if ok:
        assert resolve_student(cfg, CONFIGS.parents[1]).attention.layers == cfg.attention.layers
    else:
        with pytest.raises(SystemExit, match=r"attention.layers: -?\d+ is not a layer of a language model with 4"):
            resolve_student(cfg, CONFIGS.parents[1])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    """Each YAML in jobs/configs loads as the job it is for (SFT, distillation, or RL)."""
    from ral_dist.distill_config import DistillJobConfig

    kind = SFTJobConfig if path.name.startswith("sft_") else DistillJobConfig if path.name.startswith(
        "distill_") else RLJobConfig
    assert load_config(kind, path).model.family
