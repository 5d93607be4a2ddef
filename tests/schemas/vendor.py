"""Rebuild the vendored JSON schemas of this folder (run by hand; tests only read the JSON).

    python tests/schemas/vendor.py K8S_SCHEMA_DIR KUBERAY_CRD_DIR

K8S_SCHEMA_DIR: a ``vX.Y.Z-local-strict`` folder of the ``kubernetes-validate`` wheel
(``kubernetes_validate/kubernetes-json-schema/v1.37.0-local-strict``), whose schemas are
generated from the Kubernetes OpenAPI and reject unknown fields. KUBERAY_CRD_DIR: kuberay's
``ray-operator/config/crd/bases``. The output keeps validation keywords only: descriptions are
dropped, the Kubernetes schemas get just the definitions they reach, and the KubeRay CRD
schemas (which prune unknown fields instead of rejecting them) are made strict the way
``kubectl apply --validate=strict`` treats them: ``additionalProperties: false`` on every
object that lists its properties and does not preserve unknown fields. Identical subtrees
(the pod template of every group) are stored once under ``$defs``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
K8S = {
    "cronjob-batch-v1.json": "io.k8s.api.batch.v1.CronJob",
    "serviceaccount-v1.json": "io.k8s.api.core.v1.ServiceAccount",
    "role-rbac-v1.json": "io.k8s.api.rbac.v1.Role",
    "rolebinding-rbac-v1.json": "io.k8s.api.rbac.v1.RoleBinding",
}
CRDS = {
    "rayjob-ray-v1.json": "ray.io_rayjobs.yaml",
    "rayservice-ray-v1.json": "ray.io_rayservices.yaml",
}
SCHEMA = "https://json-schema.org/draft/2020-12/schema"
MAP_KEYS = ("properties", "$defs", "patternProperties")


def strip(node: Any) -> Any:
    """Drop ``description`` (never a property named so) from a schema tree."""
    if isinstance(node, list):
        return [strip(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "description" and isinstance(v, str):
            continue
        if k in MAP_KEYS and isinstance(v, dict):
            out[k] = {name: strip(s) for name, s in v.items()}
        else:
            out[k] = strip(v)
    return out


def refs(node: Any, found: set[str]) -> None:
    """Collect the names of the ``$defs`` entries a tree refers to."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "#/$defs/" in ref:
            found.add(ref.split("#/$defs/")[1])
        for v in node.values():
            refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def local_refs(node: Any) -> Any:
    """Point ``/api/_definitions.json#/$defs/X`` at this file's ``#/$defs/X``."""
    if isinstance(node, dict):
        return {
            k: ("#/$defs/" + v.split("#/$defs/")[1])
            if k == "$ref" and isinstance(v, str)
            else local_refs(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [local_refs(v) for v in node]
    return node


def k8s_schema(folder: Path, definition: str) -> dict[str, Any]:
    """One self-contained schema: the definition and every definition it reaches."""
    defs = json.loads((folder / "_definitions.json").read_text())["$defs"]
    keep: set[str] = set()
    todo = {definition}
    while todo:
        name = todo.pop()
        keep.add(name)
        found: set[str] = set()
        refs(defs[name], found)
        todo |= found - keep
    root = local_refs(strip(defs[definition]))
    root["$defs"] = {n: local_refs(strip(defs[n])) for n in sorted(keep - {definition})}
    return {"$schema": SCHEMA, **root}


def make_strict(node: Any) -> Any:
    """``additionalProperties: false`` where an object lists properties and keeps no others."""
    if isinstance(node, list):
        return [make_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: ({n: make_strict(s) for n, s in v.items()} if k in MAP_KEYS else make_strict(v))
        for k, v in node.items()
    }
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def canon(node: Any) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def dedupe(root: dict[str, Any], min_chars: int = 2000) -> dict[str, Any]:
    """Store each large subtree that occurs more than once under ``$defs`` (lossless)."""
    counts: Counter[str] = Counter()

    def count(node: Any) -> None:
        if isinstance(node, dict):
            text = canon(node)
            if len(text) >= min_chars:
                counts[text] += 1
            for v in node.values():
                count(v)
        elif isinstance(node, list):
            for v in node:
                count(v)

    count(root)
    defs: dict[str, Any] = {}

    def children(node: dict[str, Any]) -> dict[str, Any]:
        return {
            k: ({n: walk(s) for n, s in v.items()} if k in MAP_KEYS else walk(v))
            for k, v in node.items()
        }

    def walk(node: Any, top: bool = False) -> Any:
        if isinstance(node, dict):
            text = canon(node) if not top else ""
            if counts.get(text, 0) > 1:
                name = "n" + hashlib.sha256(text.encode()).hexdigest()[:12]
                if name not in defs:
                    defs[name] = None
                    defs[name] = children(node)
                return {"$ref": f"#/$defs/{name}"}
            return children(node)
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out = walk(root, top=True)
    out["$defs"] = dict(sorted(defs.items()))
    return out


def crd_schema(path: Path, version: str = "v1") -> dict[str, Any]:
    """The strict, deduplicated openAPIV3Schema of one CRD version."""
    crd = yaml.safe_load(path.read_text())
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = make_strict(strip(ver["schema"]["openAPIV3Schema"]))
    schema["properties"].pop("status", None)  # written by the operator, never by us
    return {"$schema": SCHEMA, **dedupe(schema)}


def main(k8s_dir: str, crd_dir: str) -> None:
    for name, definition in K8S.items():
        doc = k8s_schema(Path(k8s_dir), definition)
        (HERE / name).write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    for name, crd in CRDS.items():
        doc = crd_schema(Path(crd_dir) / crd)
        (HERE / name).write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
