"""cluster/render.py: the strategic-merge-like patching, the overlay keys, and the real cpu/gpu overlays."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cluster"))

import render  # noqa: E402
from render import RenderError, merge  # noqa: E402


def test_mappings_merge_recursively_and_null_deletes():
    target = {"a": {"b": 1, "c": 2}, "d": 3, "e": 4}
    out = merge(target, {"a": {"c": 20, "x": 9}, "d": None, "f": {"g": 1}})
    assert out == {"a": {"b": 1, "c": 20, "x": 9}, "e": 4, "f": {"g": 1}}
    assert target == {"a": {"b": 1, "c": 2}, "d": 3, "e": 4}  # untouched


def test_added_content_carries_no_nulls_or_directives():
    out = merge({"a": 1}, {"b": {"c": None, "d": {"$patch": "replace", "e": 1}}, "l": [{"name": "x", "f": None}]})
    assert out == {"a": 1, "b": {"d": {"e": 1}}, "l": [{"name": "x"}]}


def test_patch_replace_directive_replaces_a_mapping():
    target = {"resources": {"requests": {"cpu": "1", "nvidia.com/gpu": "4"}, "limits": {"cpu": "1"}}}
    out = merge(target, {"resources": {"$patch": "replace", "limits": {"cpu": "2"}}})
    assert out == {"resources": {"limits": {"cpu": "2"}}}


def test_named_lists_merge_by_name_append_and_delete():
    target = {"containers": [{"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
                             {"name": "b", "image": "y"}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "F", "value": "2"}]},
                            {"name": "b", "$patch": "delete"},
                            {"name": "c", "image": "z"}]}
    out = merge(target, patch)
    assert out == {"containers": [{"name": "a", "image": "x", "env": [{"name": "E", "value": "1"},
                                                                      {"name": "F", "value": "2"}]},
                                  {"name": "c", "image": "z"}]}


def test_field_specific_merge_keys():
    groups = {"workerGroupSpecs": [{"groupName": "rollout", "replicas": 1}, {"groupName": "reward", "replicas": 1}]}
    out = merge(groups, {"workerGroupSpecs": [{"groupName": "reward", "replicas": 3}]})
    assert [g["replicas"] for g in out["workerGroupSpecs"]] == [1, 3]
    # volumeMounts merge by mountPath: two mounts of one volume (subPaths) stay apart
    mounts = {"volumeMounts": [{"name": "s", "mountPath": "/models", "subPath": "models"},
                               {"name": "s", "mountPath": "/runs", "subPath": "runs"}]}
    out = merge(mounts, {"volumeMounts": [{"name": "s", "mountPath": "/runs", "readOnly": True}]})
    assert out["volumeMounts"][1] == {"name": "s", "mountPath": "/runs", "subPath": "runs", "readOnly": True}
    assert out["volumeMounts"][0] == mounts["volumeMounts"][0]
    ports = {"ports": [{"containerPort": 8080, "name": "metrics"}]}
    assert merge(ports, {"ports": [{"containerPort": 8080, "name": "m"}]}) == {"ports": [{"containerPort": 8080,
                                                                                        "name": "m"}]}


def test_lists_without_merge_key_are_replaced():
    assert merge({"args": ["a", "b"]}, {"args": ["c"]}) == {"args": ["c"]}
    assert merge({"x": [{"k": 1}]}, {"x": [{"k": 2}]}) == {"x": [{"k": 2}]}
    assert merge({"x": 1}, {"x": [1]}) == {"x": [1]}


@pytest.mark.parametrize("target, patch", [
    ({"c": [{"name": "a"}]}, {"c": [{"name": "b", "$patch": "delete"}]}),      # delete of a missing item
    ({"c": [{"name": "a"}, {"name": "a"}]}, {"c": [{"name": "a", "x": 1}]}),   # duplicate merge keys
    ({"m": {"a": 1}}, {"m": {"$patch": "merge-please"}}),                      # unknown directive
    ({"c": ["a"]}, {"c": [{"$patch": "delete"}]}),                             # directive without a merge key
])
def test_merge_errors(target, patch):
    with pytest.raises(RenderError):
        merge(target, patch)


def test_aliases_become_independent_trees(tmp_path):
    (tmp_path / "a.yaml").write_text("kind: A\nx: &shared {v: 1}\ny: *shared\n")
    doc = render.load_docs(tmp_path / "a.yaml")[0]
    doc["x"]["v"] = 2
    assert doc["y"] == {"v": 1}
    assert "&" not in render.dump([doc])


def test_image_repository():
    assert render.image_repository("ral-dist:latest") == "ral-dist"
    assert render.image_repository("reg.io:5000/team/ral-dist:1@sha256:ab") == "reg.io:5000/team/ral-dist"
    assert render.image_repository("ral-dist") == "ral-dist"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tiny_tree(tmp_path):
    _write(tmp_path / "base" / "a.yaml", """\
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
data: {k: v}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
spec:
  template:
    spec:
      containers:
        - {name: main, image: "ral-dist:latest"}
        - {name: side, image: "other:1"}
""")
    _write(tmp_path / "base" / "b.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: gone}\n")
    _write(tmp_path / "dash" / "one.json", '{"title": "one"}\n')
    _write(tmp_path / "dash" / "two.json", '{"title": "two"}\n')
    _write(tmp_path / "dash" / "skip.txt", "not a dashboard\n")
    return tmp_path


def test_overlay_keys(tiny_tree):
    _write(tiny_tree / "ov" / "patch.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k2: v2}\n")
    _write(tiny_tree / "ov" / "overlay.yaml", """\
resources: [../base]
delete: [{kind: Secret, name: gone}]
patches: [patch.yaml]
images: [{name: ral-dist, newName: reg.io/ral-dist, newTag: "0.1"}]
configMapGenerator:
  - name: dashboards
    files: ["../dash/*.json", "../nowhere/*.json"]
    labels: {grafana_dashboard: "1"}
namespace: ns
""")
    docs = render.render(tiny_tree / "ov")
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert set(by_name) == {"a", "d", "dashboards"}
    assert by_name["a"]["data"] == {"k": "v", "k2": "v2"}
    images = [c["image"] for c in by_name["d"]["spec"]["template"]["spec"]["containers"]]
    assert images == ["reg.io/ral-dist:0.1", "other:1"]
    assert by_name["dashboards"]["data"] == {"one.json": '{"title": "one"}\n', "two.json": '{"title": "two"}\n'}
    assert by_name["dashboards"]["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert {d["metadata"]["namespace"] for d in docs} == {"ns"}
    # round trip through the printed YAML
    assert list(yaml.safe_load_all(render.dump(docs))) == docs


def test_overlays_stack_and_generators_allow_no_files(tiny_tree):
    _write(tiny_tree / "ov1" / "overlay.yaml", "resources: [../base]\nnamespace: one\n")
    _write(tiny_tree / "ov2" / "overlay.yaml", """\
resources: [../ov1]
configMapGenerator: [{name: empty, files: ["../dash/*.none"]}]
""")
    docs = render.render(tiny_tree / "ov2")
    empty = next(d for d in docs if d["metadata"]["name"] == "empty")
    assert empty["data"] == {} and empty["kind"] == "ConfigMap"
    assert next(d for d in docs if d["metadata"]["name"] == "a")["metadata"]["namespace"] == "one"


@pytest.mark.parametrize("overlay, message", [
    ("resources: [../base]\npatches: [p.yaml]\n", "not found"),
    ("resources: [../base]\ndelete: [{kind: Secret, name: nope}]\n", "no such object"),
    ("resources: [../base, ../base/a.yaml]\n", "appears twice"),
    ("resources: [../missing]\n", "does not exist"),
    ("resources: [../base]\nnamepsace: x\n", "unknown keys"),
])
def test_overlay_errors(tiny_tree, overlay, message):
    _write(tiny_tree / "ov" / "p.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndata: {}\n")
    _write(tiny_tree / "ov" / "overlay.yaml", overlay)
    with pytest.raises(RenderError, match=message):
        render.render(tiny_tree / "ov")


def test_configmap_limit(tiny_tree):
    _write(tiny_tree / "dash" / "big.json", "x" * (render.CONFIGMAP_LIMIT + 1))
    _write(tiny_tree / "ov" / "overlay.yaml", "configMapGenerator: [{name: d, files: ['../dash/*.json']}]\n")
    with pytest.raises(RenderError, match="1 MiB"):
        render.render(tiny_tree / "ov")


def test_unknown_overlay_name():
    with pytest.raises(RenderError, match="known"):
        render.render("no-such-overlay")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_real_overlays_carry_the_dashboards(overlay):
    docs = render.render(overlay)
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ral-dist-dashboards"]
    assert len(dashboards) == 1
    assert dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(dashboards[0]["data"]) == sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))


def test_cli_prints_multidoc_yaml(capsys):
    assert render.main(["cpu"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == render.render("cpu")
    assert render.main(["nope"]) == 1
    assert "no overlay" in capsys.readouterr().err


def test_script_runs_standalone():
    out = subprocess.run([sys.executable, str(ROOT / "cluster" / "render.py"), "gpu"], capture_output=True,
                         text=True, check=True, cwd=ROOT / "tests").stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out))
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "PodMonitor", "RayCluster", "RayJob", "RayJob"]
