"""Render a plain-YAML overlay of the cluster manifests: ``python cluster/render.py gpu`` prints multi-doc YAML.

No kustomize binary is needed. An overlay is a directory with an ``overlay.yaml``; its keys, applied in this
order:

    resources: [PATH, ...]   files (multi-doc) or directories, relative to the overlay. A directory with its own
                             overlay.yaml is rendered first (overlays stack); any other directory contributes
                             every *.yaml file in it, sorted by name.
    delete: [{kind: K, name: N}, ...]        drops those objects.
    patches: [PATH, ...]     multi-doc files of partial objects, each naming its target by apiVersion, kind and
                             metadata.name, merged as described below. A patch whose target is missing fails.
    images: [{name: ral-dist, newName: REPO, newTag: TAG}, ...]
                             sets the image of every container whose image repository is `name`.
    configMapGenerator: [{name: N, files: [GLOB, ...], labels: {...}, annotations: {...}}, ...]
                             one ConfigMap per entry whose data holds every file matching the globs (relative to
                             the overlay, wildcards in the file name only; no match is fine: the ConfigMap is then
                             empty), keyed by file name. No
                             hash suffix is added to the name. Fails past the 1 MiB ConfigMap limit.
    namespace: NS            sets metadata.namespace on every object.

The merge is strategic-merge-like (a subset of what kustomize does, written out here so that it is exact):
  - mapping into mapping: merged key by key, recursively; ``key: null`` in the patch deletes the key; a patch
    mapping holding ``$patch: replace`` replaces the target mapping instead of merging into it.
  - list into list: when every item on both sides is a mapping carrying the list's merge key (``groupName`` for
    workerGroupSpecs, ``mountPath`` for volumeMounts, ``containerPort`` for ports, ``name`` otherwise), items are
    merged by that key, new ones appended, and an item holding ``$patch: delete`` removes its match. Any other
    list in a patch replaces the target list.
  - anything else: the patch value replaces the target value.

YAML anchors and aliases inside one file are expanded; every object comes out as an independent tree.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DIR = Path(__file__).resolve().parent
OVERLAYS_DIR = CLUSTER_DIR / "overlays"
OVERLAY_FILE = "overlay.yaml"
OVERLAY_KEYS = {"resources", "delete", "patches", "images", "configMapGenerator", "namespace"}
LIST_MERGE_KEYS = {"workerGroupSpecs": "groupName", "volumeMounts": "mountPath", "ports": "containerPort"}
DEFAULT_MERGE_KEY = "name"
CONFIGMAP_LIMIT = 1024 * 1024
DIRECTIVE = "$patch"


class RenderError(ValueError):
    """An overlay that cannot be rendered; the message names the file and the object."""


def _loader():
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_docs(path: Path) -> list[dict]:
    """Every non-empty document of a YAML file, aliases expanded into independent trees."""
    try:
        docs = list(yaml.load_all(path.read_text(), Loader=_loader()))
    except (OSError, yaml.YAMLError) as exc:
        raise RenderError(f"cannot read {path}: {exc}") from exc
    out = []
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise RenderError(f"{path}: every document must be a mapping")
        out.append(json.loads(json.dumps(doc)))  # breaks the object sharing that aliases create
    return out


def object_key(obj: dict) -> tuple[str, str, str]:
    meta = obj.get("metadata") or {}
    return obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("name", "")


def _merge_key(field: str | None, target: list, patch: list) -> str | None:
    key = LIST_MERGE_KEYS.get(field or "", DEFAULT_MERGE_KEY)
    items = target + patch
    if items and all(isinstance(i, dict) and key in i for i in items):
        return key
    return None


def _added(value: Any) -> Any:
    """New content from a patch: a copy without null values and without $patch directives."""
    if isinstance(value, dict):
        return {k: _added(v) for k, v in value.items() if v is not None and k != DIRECTIVE}
    if isinstance(value, list):
        return [_added(v) for v in value]
    return value


def merge(target: Any, patch: Any, field: str | None = None, where: str = "") -> Any:
    """``patch`` merged into a copy of ``target`` (see the module docstring); ``target`` is not modified."""
    if isinstance(target, dict) and isinstance(patch, dict):
        if patch.get(DIRECTIVE) == "replace":
            return _added(patch)
        if DIRECTIVE in patch:
            raise RenderError(f"{where}: unsupported {DIRECTIVE}: {patch[DIRECTIVE]!r} on a mapping")
        out = copy.deepcopy(target)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = merge(out[key], value, key, f"{where}.{key}")
            else:
                out[key] = _added(value)
        return out
    if isinstance(target, list) and isinstance(patch, list):
        key = _merge_key(field, target, patch)
        if key is None:
            if any(isinstance(i, dict) and DIRECTIVE in i for i in patch):
                raise RenderError(f"{where}: {DIRECTIVE} in a list without merge key {field!r}")
            return _added(patch)
        out = copy.deepcopy(target)
        index = {}
        for i, item in enumerate(out):
            if item[key] in index:
                raise RenderError(f"{where}: two items with {key}={item[key]!r}")
            index[item[key]] = i
        deleted = set()
        for item in patch:
            name = item[key]
            if item.get(DIRECTIVE) == "delete":
                if name not in index or name in deleted:
                    raise RenderError(f"{where}: {DIRECTIVE}: delete of missing item {key}={name!r}")
                deleted.add(name)
            elif name in index:
                out[index[name]] = merge(out[index[name]], item, None, f"{where}[{key}={name}]")
            else:
                out.append(_added(item))
                index[name] = len(out) - 1
        return [item for item in out if item[key] not in deleted]
    return _added(patch)


def _walk_containers(node: Any):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            yield from _walk_containers(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_containers(value)


def image_repository(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image[: len(image) - len(last)] + last.split(":", 1)[0]


def set_images(docs: list[dict], images: list[dict]) -> None:
    for spec in images:
        if "name" not in spec or not set(spec) <= {"name", "newName", "newTag"}:
            raise RenderError(f"images: entries are {{name, newName?, newTag?}}, got {spec}")
        for doc in docs:
            for container in _walk_containers(doc):
                image = container.get("image")
                if isinstance(image, str) and image_repository(image) == spec["name"]:
                    tag = image[len(spec["name"]):]
                    repo = spec.get("newName", spec["name"])
                    container["image"] = repo + (f":{spec['newTag']}" if "newTag" in spec else tag)


def generate_configmap(base_dir: Path, spec: dict) -> dict:
    unknown = set(spec) - {"name", "files", "labels", "annotations"}
    if unknown or "name" not in spec:
        raise RenderError(f"configMapGenerator: unknown keys {sorted(unknown)} or no name in {spec}")
    data: dict[str, str] = {}
    for pattern in spec.get("files", []):
        folder, name = (base_dir / pattern).parent, Path(pattern).name
        for path in sorted(folder.glob(name)) if folder.is_dir() else []:
            if not path.is_file():
                continue
            if path.name in data:
                raise RenderError(f"configMapGenerator {spec['name']}: two files named {path.name}")
            data[path.name] = path.read_text()
    size = sum(len(k) + len(v.encode()) for k, v in data.items())
    if size > CONFIGMAP_LIMIT:
        raise RenderError(f"configMapGenerator {spec['name']}: {size} bytes, over the 1 MiB ConfigMap limit")
    meta: dict[str, Any] = {"name": spec["name"]}
    if spec.get("labels"):
        meta["labels"] = dict(spec["labels"])
    if spec.get("annotations"):
        meta["annotations"] = dict(spec["annotations"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _resource_docs(path: Path) -> list[dict]:
    if path.is_dir():
        if (path / OVERLAY_FILE).exists():
            return render(path)
        return [doc for f in sorted(path.glob("*.yaml")) for doc in load_docs(f)]
    if path.is_file():
        return load_docs(path)
    raise RenderError(f"resource {path} does not exist")


def overlay_dir(name_or_path: str | Path) -> Path:
    """``cpu`` / ``gpu`` (a directory under cluster/overlays) or a path to an overlay directory."""
    path = Path(name_or_path)
    if not (path / OVERLAY_FILE).exists() and (OVERLAYS_DIR / str(name_or_path) / OVERLAY_FILE).exists():
        path = OVERLAYS_DIR / str(name_or_path)
    if not (path / OVERLAY_FILE).exists():
        known = sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / OVERLAY_FILE).exists())
        raise RenderError(f"no overlay {name_or_path!r} (known: {known})")
    return path


def render(overlay: str | Path) -> list[dict]:
    """The objects of an overlay, fully merged."""
    directory = overlay_dir(overlay)
    spec = (load_docs(directory / OVERLAY_FILE) or [{}])[0]
    unknown = set(spec) - OVERLAY_KEYS
    if unknown:
        raise RenderError(f"{directory / OVERLAY_FILE}: unknown keys {sorted(unknown)} (known: {sorted(OVERLAY_KEYS)})")
    docs: list[dict] = []
    for resource in spec.get("resources", []):
        docs.extend(_resource_docs(directory / resource))
    seen = set()
    for doc in docs:
        key = object_key(doc)
        if key in seen:
            raise RenderError(f"{directory}: object {key} appears twice")
        seen.add(key)

    for target in spec.get("delete", []):
        kept = [d for d in docs if (d.get("kind"), (d.get("metadata") or {}).get("name")) !=
                (target.get("kind"), target.get("name"))]
        if len(kept) == len(docs):
            raise RenderError(f"{directory}: delete {target}: no such object")
        docs = kept

    for patch_file in spec.get("patches", []):
        for patch in load_docs(directory / patch_file):
            key = object_key(patch)
            matches = [i for i, d in enumerate(docs) if object_key(d) == key]
            if not matches:
                raise RenderError(f"{directory / patch_file}: patch target {key} not found")
            i = matches[0]
            docs[i] = merge(docs[i], patch, None, f"{key[1]}/{key[2]}")

    set_images(docs, spec.get("images", []))
    for generator in spec.get("configMapGenerator", []):
        docs.append(generate_configmap(directory, generator))
    if spec.get("namespace"):
        for doc in docs:
            doc.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return docs


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump(docs: list[dict]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overlay", help="an overlay name under cluster/overlays (cpu, gpu) or its directory")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(dump(render(args.overlay)))
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
