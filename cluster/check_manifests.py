"""Check rendered overlays offline before they reach a cluster: ``python cluster/check_manifests.py cpu gpu``.

Two checks, both offline:

1. Schemas, strictly. KubeRay kinds against ``spec.versions[].schema.openAPIV3Schema`` of the CRDs in
   ``../shared/kuberay-crds`` (or ``$KUBERAY_CRDS``), turned into JSON Schema with every object that lists
   ``properties`` closed (``additionalProperties: false``) unless it carries ``x-kubernetes-preserve-unknown-fields``;
   ``x-kubernetes-int-or-string`` accepts an integer or a string, ``nullable`` accepts null, int32/int64 formats
   are range-checked; ``metadata`` gets a strict ObjectMeta subset. Core kinds (ConfigMap, PersistentVolumeClaim,
   Secret, Service, ...) with ``kubernetes_validate.validate(obj, K8S_VERSION, strict=True)``. PodMonitor and
   ServiceMonitor (Prometheus operator CRDs that neither source ships) against a small strict schema of the
   fields used here. CEL rules (``x-kubernetes-validations``) are not evaluated.

2. Consistency: each RayJob's entrypoint names a job config (``--config``, ``--set``); its placement-group bundles
   (learner ranks, rollout workers, reward workers, and any other role section of the config: one with
   ``num_workers``/``num_ranks`` and ``cpus_per_*``/``gpus_per_*``) must bin-pack into the pods of the worker groups
   whose Ray node labels match the role's ``placement.<role>.node_labels`` (a group's labels: KubeRay's
   ``ray.io/node-group`` = its name, its ``labels`` and rayStartParams ``labels``; a selector that matches no group
   is an error naming the field), or, for a role without labels, of the worker group of the same name, with the CPUs, GPUs and custom resources Ray will see on each pod (rayStartParams, else the
   container's limits, as KubeRay derives them). An ``sft:`` warm start also needs its Ray Train workers
   (``train.num_workers`` x 1 CPU) somewhere on the workers. The same configs must also fit the interactive
   RayCluster at its autoscaling maximum.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = Path(os.environ.get("KUBERAY_CRDS", ROOT.parent / "shared" / "kuberay-crds"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}
K8S_VERSION = "1.33"
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "networking.k8s.io/v1", "rbac.authorization.k8s.io/v1",
                     "policy/v1"}
JOB_CONFIG_CLASSES = {"jobs/ral_grpo.py": ("ral_dist.config", "RLJobConfig"),
                      "jobs/ral_distill.py": ("ral_dist.distill_config", "DistillJobConfig")}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
EPS = 1e-9

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
OBJECT_META_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": rf"^{_DNS_LABEL}$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _closed(properties: dict, required: list[str] | None = None) -> dict:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    return schema


_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_LABEL_SELECTOR = _closed({
    "matchLabels": _STR_MAP,
    "matchExpressions": {"type": "array", "items": _closed(
        {"key": {"type": "string"}, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
         "values": {"type": "array", "items": {"type": "string"}}}, ["key", "operator"])},
})
_ENDPOINT = {
    "port": {"type": "string"},
    "path": {"type": "string"},
    "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h))+)$"},
    "scrapeTimeout": {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h))+)$"},
    "scheme": {"enum": ["http", "https"]},
    "honorLabels": {"type": "boolean"},
}
_NAMESPACE_SELECTOR = _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}})
# A strict subset of monitoring.coreos.com/v1 (fields used here); a field outside it is rejected, as a typo is.
PROMETHEUS_OPERATOR_SCHEMAS = {
    "PodMonitor": _closed({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": OBJECT_META_SCHEMA,
        "spec": _closed({
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _NAMESPACE_SELECTOR,
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _closed(_ENDPOINT, ["port"])},
        }, ["selector", "podMetricsEndpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    "ServiceMonitor": _closed({
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": OBJECT_META_SCHEMA,
        "spec": _closed({
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": _NAMESPACE_SELECTOR,
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "endpoints": {"type": "array", "minItems": 1, "items": _closed(_ENDPOINT, ["port"])},
        }, ["selector", "endpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


# ---------------------------------------------------------------------------------------------- schemas


def strict_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema (Kubernetes dialect) as strict JSON Schema; the input is not modified."""
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties", "definitions", "$defs"):
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict | list):
            out[key] = strict_schema(value)
        elif key in ("anyOf", "allOf", "oneOf"):
            out[key] = [strict_schema(sub) for sub in value]
        elif key in ("enum", "required", "default", "example", "const"):
            out[key] = copy.deepcopy(value)
        else:
            out[key] = value
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker(formats=())
    for name, (low, high) in INT_RANGES.items():
        def check(value, low=low, high=high):
            return not isinstance(value, int) or isinstance(value, bool) or low <= value <= high
        checker.checks(name)(check)
    return checker


@functools.cache
def crd_validator(kind: str) -> tuple[jsonschema.protocols.Validator, str]:
    """The strict validator of a KubeRay kind and its apiVersion (the CRD's storage version)."""
    path = CRD_DIR / CRD_FILES[kind]
    if not path.exists():
        raise FileNotFoundError(f"KubeRay CRD {path} not found (set KUBERAY_CRDS to the folder of the CRDs)")
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["spec"]["names"]["kind"] == kind, path
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    schema = strict_schema(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META_SCHEMA
    schema["properties"]["apiVersion"] = {"const": f"{crd['spec']['group']}/{version['name']}"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return validator_cls(schema, format_checker=_format_checker()), schema["properties"]["apiVersion"]["const"]


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def _describe(obj: dict) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def schema_problems(obj: dict) -> list[str]:
    """Every schema violation of one object, as 'Kind/name: path: message' lines (empty when it is valid)."""
    kind = obj.get("kind")
    if kind in CRD_FILES:
        validator, _ = crd_validator(kind)
        errors = sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message))
        return [f"{_describe(obj)}: {_where(e)}: {e.message}" for e in errors]
    if kind in PROMETHEUS_OPERATOR_SCHEMAS:
        validator = jsonschema.Draft202012Validator(PROMETHEUS_OPERATOR_SCHEMAS[kind])
        return [f"{_describe(obj)}: {_where(e)}: {e.message}" for e in validator.iter_errors(obj)]
    if obj.get("apiVersion") in CORE_API_VERSIONS:
        import kubernetes_validate

        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            # kubernetes_validate stops at the first violation; it copies jsonschema's error fields onto its own
            path = ".".join(str(p) for p in getattr(exc, "absolute_path", [])) or "<root>"
            return [f"{_describe(obj)}: {path}: {getattr(exc, 'message', exc)}"]
        except kubernetes_validate.SchemaNotFoundError as exc:
            return [f"{_describe(obj)}: no Kubernetes {K8S_VERSION} schema: {exc}"]
        return []
    return [f"{_describe(obj)}: unknown kind {obj.get('apiVersion')}/{kind}: no schema to validate it against"]


# ------------------------------------------------------------------------------------------ consistency


def quantity(value: Any) -> float:
    """A Kubernetes quantity (``4``, ``"500m"``, ``"1.5"``, ``"2k"``) as a number (CPU/GPU counts only)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*(m|k|M|G)?\s*", str(value))
    if not match:
        raise ValueError(f"not a CPU/GPU quantity: {value!r}")
    scale = {"m": 1e-3, None: 1.0, "k": 1e3, "M": 1e6, "G": 1e9}[match.group(2)]
    return float(match.group(1)) * scale


def parse_custom_resources(value: str | None) -> dict[str, float]:
    """rayStartParams ``resources`` (``'"{\\"rollout_slot\\": 4}"'``, the form KubeRay passes to ``ray start``)."""
    if not value:
        return {}
    text = value.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"')
    parsed = json.loads(text)
    if not isinstance(parsed, dict) or not all(isinstance(v, int | float) for v in parsed.values()):
        raise ValueError(f"rayStartParams.resources must be a JSON object of numbers, got {value!r}")
    return {k: float(v) for k, v in parsed.items()}


def ray_pod_resources(group: dict) -> dict[str, float]:
    """The logical resources Ray advertises on one pod of a head or worker group, as KubeRay derives them:
    rayStartParams num-cpus / num-gpus when set, else the Ray container's CPU limit (request without a limit),
    rounded up to a whole CPU, and the sum of its ``*gpu`` limits; plus rayStartParams resources."""
    params = group.get("rayStartParams") or {}
    container = group["template"]["spec"]["containers"][0]
    res = container.get("resources") or {}
    limits, requests = res.get("limits") or {}, res.get("requests") or {}
    if "num-cpus" in params:
        cpus = quantity(params["num-cpus"])
    else:
        cpu = limits.get("cpu", requests.get("cpu"))
        cpus = float(math.ceil(quantity(cpu) - EPS)) if cpu is not None else 0.0
    if "num-gpus" in params:
        gpus = quantity(params["num-gpus"])
    else:
        gpus = float(sum(quantity(v) for k, v in limits.items() if k.endswith("gpu")))
    out = {"CPU": cpus, "GPU": gpus}
    for name, amount in parse_custom_resources(params.get("resources")).items():
        out[name] = out.get(name, 0.0) + amount
    return out


@dataclass
class Group:
    name: str
    pods: int
    per_pod: dict[str, float]
    labels: dict[str, str] = field(default_factory=dict)


NODE_GROUP_LABEL = "ray.io/node-group"  # KubeRay sets it on every Ray node of a worker group to the group's name


def group_labels(spec: dict) -> dict[str, str]:
    """The Ray node labels of a worker group's pods: ``ray.io/node-group`` (KubeRay's, the group name), the
    group's ``labels`` and rayStartParams ``labels`` (``k=v,k2=v2``, as ``ray start --labels`` takes them)."""
    labels = {NODE_GROUP_LABEL: spec["groupName"], **(spec.get("labels") or {})}
    raw = str((spec.get("rayStartParams") or {}).get("labels", "")).strip().strip('"')
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = pair.partition("=")
        labels[key.strip()] = value.strip()
    return labels


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Ray's label-selector semantics: ``v`` equals, ``!v`` differs (or is absent), ``in(a,b)`` is one of them,
    ``!in(a,b)`` is none of them (or absent)."""
    for key, expr in selector.items():
        negate = expr.startswith("!")
        body = expr[1:] if negate else expr
        values = {v.strip() for v in body[3:-1].split(",")} if body.startswith("in(") and body.endswith(")") \
            else {body}
        if (labels.get(key) in values) == negate:
            return False
    return True


def cluster_groups(cluster_spec: dict, at_max: bool) -> list[Group]:
    """The worker groups of a RayCluster spec with their pod count: ``replicas``, or ``maxReplicas`` when the
    cluster autoscales (``at_max``), times ``numOfHosts``."""
    groups = []
    for spec in cluster_spec.get("workerGroupSpecs") or []:
        count = spec.get("maxReplicas", 0) if at_max else spec.get("replicas", spec.get("minReplicas", 0))
        groups.append(Group(spec["groupName"], int(count) * int(spec.get("numOfHosts", 1)), ray_pod_resources(spec),
                            group_labels(spec)))
    return groups


@dataclass
class Role:
    name: str
    count: int
    bundle: dict[str, float] = field(default_factory=dict)


def config_roles(config) -> list[Role]:
    """The placement-group bundles of a job config, one Role per role section (learner, rollout, reward, ...).

    A section is a role when it has ``num_workers`` or ``num_ranks``; its bundle is ``cpus_per_*``, ``gpus_per_*``
    and ``custom_resources`` (when the config has that field)."""
    roles = []
    for name in type(config).model_fields:
        section = getattr(config, name)
        fields = getattr(type(section), "model_fields", {})
        count_field = next((f for f in ("num_ranks", "num_workers") if f in fields), None)
        if count_field is None:
            continue
        bundle = {}
        for f in fields:
            if f.startswith("cpus_per_"):
                bundle["CPU"] = float(getattr(section, f))
            elif f.startswith("gpus_per_"):
                bundle["GPU"] = float(getattr(section, f))
        for key, amount in (getattr(section, "custom_resources", None) or {}).items():
            bundle[key] = float(amount)
        roles.append(Role(name, int(getattr(section, count_field)), {k: v for k, v in bundle.items() if v > 0}))
    return roles


def pack(bundles: list[dict[str, float]], pods: list[dict[str, float]]) -> int | None:
    """First-fit-decreasing bin packing; the index of the first bundle that does not fit, None if all fit.
    (Exact for the identical bundles of one role.)"""
    free = [dict(p) for p in pods]
    order = sorted(range(len(bundles)), key=lambda i: sorted(bundles[i].items(), key=lambda kv: -kv[1]),
                   reverse=True)
    for i in order:
        bundle = bundles[i]
        for pod in free:
            if all(pod.get(k, 0.0) + EPS >= v for k, v in bundle.items()):
                for k, v in bundle.items():
                    pod[k] = pod.get(k, 0.0) - v
                break
        else:
            return i
    return None


@dataclass
class JobRef:
    script: str
    config: str | None
    overrides: list[str]


def parse_entrypoint(entrypoint: str) -> JobRef:
    """``python jobs/X.py --config PATH [--set k=v ...] [--steps N] ...`` → the script, config and overrides."""
    args = shlex.split(entrypoint)
    script = next((a for a in args if a.endswith(".py")), None)
    if script is None:
        raise ValueError(f"entrypoint runs no python script: {entrypoint!r}")
    config, overrides = None, []
    i = args.index(script) + 1
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if name in ("--config", "--set", "--steps"):
            value = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
            if value is None:
                raise ValueError(f"entrypoint: {name} without a value")
            i += 1 if eq else 2
            if name == "--config":
                config = value
            elif name == "--set":
                overrides.append(value)
            else:
                overrides.append(f"run.steps={value}")
        else:
            i += 1
    return JobRef(script, config, overrides)


def config_path(ref: JobRef) -> Path | None:
    return (ROOT / ref.config) if ref.config and not Path(ref.config).is_absolute() else \
        (Path(ref.config) if ref.config else None)


def load_job_config(ref: JobRef, extra_overrides: list[str] | None = None):
    """The validated job config a RayJob entrypoint refers to (ral_dist.config.load_config)."""
    import importlib

    from ral_dist.config import load_config

    where = JOB_CONFIG_CLASSES.get(ref.script)
    if where is None:
        raise ValueError(f"unknown job script {ref.script} (known: {sorted(JOB_CONFIG_CLASSES)})")
    module, class_name = where
    cls = getattr(importlib.import_module(module), class_name, None)
    if cls is None:
        raise ValueError(f"{ref.script}: {module} has no {class_name} yet")
    return load_config(cls, config_path(ref), ref.overrides + list(extra_overrides or []))


def _role_labels(config, role: str) -> dict[str, str]:
    placement = getattr(config, "placement", None)
    section = getattr(placement, role, None) if placement is not None else None
    return dict(getattr(section, "node_labels", None) or {})


def fit_problems(config, groups: list[Group], where: str) -> list[str]:
    """Why a job config does not fit those worker groups (empty: it fits)."""
    problems = []
    for role in config_roles(config):
        if role.count == 0:
            continue
        selector = _role_labels(config, role.name)
        if selector:
            matched = [g for g in groups if selector_matches(selector, g.labels)]
            if not matched:
                problems.append(f"{where}: placement.{role.name}.node_labels {selector} match no worker group "
                                f"({', '.join(f'{g.name} {g.labels}' for g in groups)})")
                continue
        else:
            matched = [g for g in groups if g.name == role.name]
            if not matched:
                problems.append(f"{where}: no worker group {role.name!r} for {role.count} {role.name} bundles")
                continue
        failed = pack([role.bundle] * role.count, [g.per_pod for g in matched for _ in range(g.pods)])
        if failed is not None:
            shown = ", ".join(f"{g.name!r} ({g.pods} pods x {g.per_pod})" for g in matched)
            problems.append(f"{where}: {role.count} {role.name} bundles of {role.bundle} do not fit group {shown}")
    checkpoint = getattr(getattr(config, "model", None), "checkpoint", None)
    if isinstance(checkpoint, str) and checkpoint.startswith("sft:"):
        from ral_dist.config import SFTJobConfig, load_config

        sft = load_config(SFTJobConfig, ROOT / checkpoint[len("sft:"):])
        pods = [g.per_pod for g in groups for _ in range(g.pods)]
        if pack([{"CPU": 1.0}] * sft.train.num_workers, pods) is not None:
            problems.append(f"{where}: the SFT warm start's {sft.train.num_workers} Ray Train workers x 1 CPU "
                            "do not fit the worker groups")
    return problems


def job_problems(rayjob: dict, extra_overrides: list[str] | None = None,
                 interactive: dict | None = None) -> list[str]:
    """Consistency of one RayJob: its config fits its own cluster (and the interactive RayCluster, if given)."""
    ref = parse_entrypoint(rayjob["spec"]["entrypoint"])
    config = load_job_config(ref, extra_overrides)
    name = _describe(rayjob)
    problems = fit_problems(config, cluster_groups(rayjob["spec"]["rayClusterSpec"], at_max=False), name)
    if interactive is not None:
        autoscaled = bool(interactive["spec"].get("enableInTreeAutoscaling"))
        problems += fit_problems(config, cluster_groups(interactive["spec"], at_max=autoscaled),
                                 f"{name} on {_describe(interactive)}")
    return problems


# ------------------------------------------------------------------------------------------------- CLI


def check_overlay(overlay: str | Path) -> list[str]:
    """All schema and consistency problems of a rendered overlay. Jobs whose config does not exist are reported
    by the caller; here they are skipped with a note on stderr."""
    docs = render.render(overlay)
    problems = [p for doc in docs for p in schema_problems(doc)]
    clusters = [d for d in docs if d.get("kind") == "RayCluster"]
    for job in (d for d in docs if d.get("kind") == "RayJob"):
        ref = parse_entrypoint(job["spec"]["entrypoint"])
        path = config_path(ref)
        if path is None or not path.exists():
            print(f"note: {_describe(job)}: config {ref.config} does not exist yet; not checked", file=sys.stderr)
            continue
        for cluster in clusters or [None]:
            problems += job_problems(job, interactive=cluster)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overlays", nargs="+", help="overlay names under cluster/overlays (cpu, gpu) or directories")
    args = parser.parse_args(argv)
    failed = False
    for overlay in args.overlays:
        problems = check_overlay(overlay)
        for problem in problems:
            print(f"{overlay}: {problem}")
        print(f"{overlay}: {'FAILED' if problems else 'ok'} ({len(problems)} problems)")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
