"""Every Kubeflow Trainer object in infra/ against the pinned release's CRDs (strict) and webhook rules.

The TrainJob the launcher creates is checked the same way in tests/pipelines/test_trainjob.py.
"""

import copy
from pathlib import Path

import pytest
import yaml

from tests.infra.trainer_crds import CRD_DIR, PLURALS, RELEASE, crd, runtime_webhook_errors, schema_errors

INFRA = Path(__file__).resolve().parents[2] / "infra"
TRAINER_DOCS = [
    (p, d) for p in sorted(INFRA.rglob("*.yaml")) for d in yaml.safe_load_all(p.read_text())
    if d and d.get("apiVersion", "").startswith("trainer.kubeflow.org/")
]


def test_the_vendored_crds_are_the_pinned_release_with_its_licence():
    readme = (CRD_DIR / "README.md").read_text()
    assert f"tag `{RELEASE}`" in readme and "658725bdae5c7e3a0854d93ac6ff492e109a22ab" in readme
    assert "Apache License" in (CRD_DIR / "LICENSE").read_text()
    for kind, plural in PLURALS.items():
        doc = crd(kind)
        assert doc["metadata"]["name"] == f"{plural}.trainer.kubeflow.org"
        assert doc["spec"]["names"]["kind"] == kind


def test_infra_holds_a_trainer_runtime():
    assert [d["kind"] for _, d in TRAINER_DOCS] == ["TrainingRuntime"]


@pytest.mark.parametrize("doc", [d for _, d in TRAINER_DOCS], ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_trainer_objects_pass_strict_schema_validation_and_the_webhook(doc):
    assert schema_errors(doc) == []
    assert runtime_webhook_errors(doc) == []


def test_validation_is_strict():
    """The checks catch what the API server refuses: v2.1's numProcPerNode, unknown fields, bad types."""
    (runtime,) = [d for _, d in TRAINER_DOCS]
    old = copy.deepcopy(runtime)
    old["spec"]["mlPolicy"]["torch"]["numProcPerNode"] = "auto"  # removed in Trainer v2.2
    assert any("numProcPerNode" in e for e in schema_errors(old))
    typo = copy.deepcopy(runtime)
    node = typo["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    node["containers"][0]["imagePullPolcy"] = "Always"
    assert any("imagePullPolcy" in e for e in schema_errors(typo))
    meta = copy.deepcopy(runtime)
    meta["metadata"]["label"] = {"a": "b"}
    assert any("label" in e for e in schema_errors(meta))
    wrong = copy.deepcopy(runtime)
    wrong["spec"]["mlPolicy"]["numNodes"] = "two"
    assert any("numNodes" in e for e in schema_errors(wrong))
    assert schema_errors({**runtime, "kind": "ClusterTrainingRuntime"}) == []  # same spec schema
    assert schema_errors({**runtime, "apiVersion": "kubeflow.org/v1"}) != []


def test_runtime_webhook_rules_catch_what_the_trainer_refuses():
    (runtime,) = [d for _, d in TRAINER_DOCS]
    two = copy.deepcopy(runtime)
    two["spec"]["mlPolicy"]["mpi"] = {}
    assert any("only one" in e for e in runtime_webhook_errors(two))
    renamed = copy.deepcopy(runtime)
    renamed["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"][0]["name"] = "trainer"
    assert any("must contain the container node" in e for e in runtime_webhook_errors(renamed))
    replicas = copy.deepcopy(runtime)
    replicas["spec"]["template"]["spec"]["replicatedJobs"][0]["replicas"] = 2
    assert any("replicas" in e for e in runtime_webhook_errors(replicas))
