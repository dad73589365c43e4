"""Kubeflow Trainer v2.3.0 offline: strict validation against its CRDs, and its webhook's rules.

`schema_errors(obj)` validates a TrainJob, TrainingRuntime or ClusterTrainingRuntime against
the openAPIV3Schema of the vendored CRD (`crds/trainer-v2.3.0/`, see its README) with
unknown fields rejected, as `kubectl apply --validate=strict` (server-side field
validation) does: every object schema that lists `properties` and neither allows
`additionalProperties` nor sets `x-kubernetes-preserve-unknown-fields` gets
`additionalProperties: false`, and `metadata` is held to ObjectMeta's fields.

`webhook_errors(trainjob, runtime)` replays the admission checks the Trainer's
validating webhook runs on a TrainJob's creation and that concern what we write:
the jobset plugin (pkg/runtime/framework/plugins/jobset/jobset.go, `Validate`), the
torch plugin (plugins/torch/torch.go, `Validate`), and the CEL rules on the TrainJob
CRD. `runtime_webhook_errors(runtime)` does the same for a runtime
(pkg/webhooks/trainingruntime_webhook.go, `validateReplicatedJobs`).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml

RELEASE = "v2.3.0"
CRD_DIR = Path(__file__).parent / "crds" / f"trainer-{RELEASE}"
API_VERSION = "trainer.kubeflow.org/v1alpha1"
PLURALS = {"TrainJob": "trainjobs", "TrainingRuntime": "trainingruntimes",
           "ClusterTrainingRuntime": "clustertrainingruntimes"}

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# the ObjectMeta fields a client may set (what the API server accepts beside server-set ones)
OBJECT_META = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "generateName": {"type": "string"}, "namespace": {"type": "string"},
        "labels": _STRING_MAP, "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"}, "resourceVersion": {"type": "string"}, "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]}, "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"}, "managedFields": {"type": "array"},
    },
}


def _strict(node: Any) -> Any:
    """A CRD structural schema as a JSON Schema that rejects unknown fields."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if k != "description"}
    if out.pop("x-kubernetes-int-or-string", False) and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd(kind: str) -> dict:
    text = (CRD_DIR / f"trainer.kubeflow.org_{PLURALS[kind]}.yaml").read_text()
    (doc,) = [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]
    return doc


@functools.cache
def _validator(kind: str) -> Any:
    import jsonschema

    (version,) = [v for v in crd(kind)["spec"]["versions"] if v["name"] == API_VERSION.split("/")[1]]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return jsonschema.Draft7Validator(schema)


def schema_errors(obj: dict) -> list[str]:
    """Every schema violation of OBJ, as `path: message` lines ([] = the API server would store it)."""
    kind = obj.get("kind")
    if kind not in PLURALS:
        return [f"kind: {kind!r} is not a Kubeflow Trainer kind"]
    errors = [] if obj.get("apiVersion") == API_VERSION else [f"apiVersion: {obj.get('apiVersion')!r}"]
    for e in sorted(_validator(kind).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}")
    return errors


# ---- the webhook -------------------------------------------------------------------------------

NODE, DATASET_INITIALIZER, MODEL_INITIALIZER = "node", "dataset-initializer", "model-initializer"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_CONTAINER = {"trainer": NODE, DATASET_INITIALIZER: DATASET_INITIALIZER, MODEL_INITIALIZER: MODEL_INITIALIZER}
TORCHRUN_RESERVED_ENV = {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HTTP_PATH = re.compile(r"^[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$")


def _pod_spec(rjob: dict) -> dict:
    return ((((rjob.get("template") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}


def _runtime_containers(runtime: dict) -> dict[str, set[str]]:
    """Replicated job name -> its container and initContainer names (jobset.go's rJobContainerNames)."""
    out = {}
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        pod = _pod_spec(rjob)
        out[rjob["name"]] = {c["name"] for c in pod.get("initContainers", []) + pod.get("containers", [])}
    return out


def _domain_prefixed_path(value: str) -> list[str]:
    """apimachinery's IsDomainPrefixedPath: `<DNS-1123 subdomain>/<HTTP path>`."""
    domain, slash, path = value.partition("/")
    if not slash or not domain or not path:
        return [f"manager {value!r}: must be a domain-prefixed path (such as 'acme.io/foo')"]
    if len(domain) > 253 or not _DNS1123_SUBDOMAIN.match(domain):
        return [f"manager {value!r}: {domain!r} is not a DNS-1123 subdomain"]
    return [] if _HTTP_PATH.match(path) else [f"manager {value!r}: {path!r} is not a valid path"]


def webhook_errors(trainjob: dict, runtime: dict) -> list[str]:
    """What the Trainer's TrainJob webhook (and the CRD's CEL rules) would refuse; [] = admitted."""
    errors = []
    name = trainjob["metadata"].get("name", "")
    if not _DNS1035_LABEL.match(name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} must be an RFC 1035 DNS label of <= 63 characters")
    ref = trainjob["spec"]["runtimeRef"]
    if (ref["name"], ref.get("kind", "ClusterTrainingRuntime")) != (runtime["metadata"]["name"], runtime["kind"]):
        errors.append(f"spec.runtimeRef {ref} does not name the runtime "
                      f"{runtime['kind']}/{runtime['metadata']['name']}")
    containers = _runtime_containers(runtime)
    for patch in trainjob["spec"].get("runtimePatches", []):
        errors += _domain_prefixed_path(patch.get("manager", ""))
        rjobs = ((((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec")) or {})
        for rjob in rjobs.get("replicatedJobs", []):
            if rjob["name"] not in containers:
                errors.append(f"runtimePatches: replicated job {rjob['name']} does not exist in the runtime")
                continue
            pod = _pod_spec(rjob)
            for c in pod.get("initContainers", []):
                if c["name"] not in containers[rjob["name"]]:
                    errors.append(f"runtimePatches: initContainer {c['name']} not in runtime job {rjob['name']}")
            for c in pod.get("containers", []):
                if c["name"] not in containers[rjob["name"]]:
                    errors.append(f"runtimePatches: container {c['name']} not in runtime job {rjob['name']}")
                elif c.get("env") and c["name"] in (DATASET_INITIALIZER, MODEL_INITIALIZER, NODE):
                    errors.append(f"runtimePatches: must not have envs for the {DATASET_INITIALIZER}, "
                                  f"{MODEL_INITIALIZER}, {NODE} containers (job {rjob['name']})")
    if "torch" in runtime["spec"].get("mlPolicy", {}):
        reserved = {e["name"] for e in (trainjob["spec"].get("trainer") or {}).get("env", [])} & TORCHRUN_RESERVED_ENV
        if reserved:
            errors.append(f"spec.trainer.env: must not have reserved envs {sorted(reserved)}")
    return errors


def runtime_webhook_errors(runtime: dict) -> list[str]:
    """What the (Cluster)TrainingRuntime webhook and the CRD's CEL rules would refuse; [] = admitted."""
    errors = []
    policies = [p for p in ("torch", "mpi", "jax", "xgboost", "flux") if p in runtime["spec"].get("mlPolicy", {})]
    if len(policies) > 1:
        errors.append(f"spec.mlPolicy: only one of the policies can be configured, got {policies}")
    for rjob in runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        ancestor = ((rjob.get("template") or {}).get("metadata") or {}).get("labels", {}).get(ANCESTOR_LABEL)
        if ancestor not in ANCESTOR_CONTAINER:
            continue
        if rjob.get("replicas", 1) != 1:
            errors.append(f"replicatedJobs {rjob['name']}: replicas always must be 1")
        if ANCESTOR_CONTAINER[ancestor] not in {c["name"] for c in _pod_spec(rjob).get("containers", [])}:
            errors.append(f"replicatedJobs {rjob['name']}: must contain the container {ANCESTOR_CONTAINER[ancestor]}")
    return errors
