"""cluster/ and examples/ checked against real schemas: KubeRay's CRDs (OpenAPI v3), the cluster
launcher's JSON schema shipped in the `ray` package, Ray Serve's own config classes, our specs."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from support.manifests import ROOT, cluster_specs, launcher, manifest, ray_starts

# KubeRay's CRDs (Apache-2.0), vendored unchanged: see tests/data/kuberay-crds/README.md.
CRDS = ROOT / "tests" / "data" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def _structural(schema: dict) -> dict:
    """A Kubernetes structural schema as plain JSON Schema, as strict as `kubectl apply
    --validate=strict`: unknown fields are errors unless the schema preserves them;
    ``x-kubernetes-int-or-string`` accepts both types; other ``x-kubernetes-*`` keys are dropped."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out:
        out["properties"] = {k: _structural(v) for k, v in out["properties"].items()}
        if (
            not schema.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out
        ):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _structural(out["additionalProperties"])
    if "items" in out:
        out["items"] = _structural(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            out[key] = [_structural(s) for s in schema[key]]
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-1.4 MB of YAML
    crd = yaml.load((CRDS / CRD_FILES[kind]).read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _structural(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # validated by the API server itself
    return jsonschema.Draft7Validator(schema)


def _errors(kind: str, manifest: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(kind).iter_errors(manifest)
    ]


@pytest.mark.parametrize(
    "name,kind",
    [
        ("raycluster.yaml", "RayCluster"),
        ("rayjob-train.yaml", "RayJob"),
        ("rayservice.yaml", "RayService"),
    ],
)
def test_kuberay_manifests_match_the_crds(name, kind):
    document = manifest(name)
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == kind
    assert _errors(kind, document) == []


def test_the_crd_validator_catches_mistakes():
    document = manifest("raycluster.yaml")
    typo = copy.deepcopy(document)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 0  # not a field
    wrong_type = copy.deepcopy(document)
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    missing = copy.deepcopy(document)
    del missing["spec"]["headGroupSpec"]["template"]
    for broken in (typo, wrong_type, missing):
        assert _errors("RayCluster", broken), broken


def test_gpu_worker_group_autoscales_from_zero_with_matching_gpus():
    for name, spec in cluster_specs():
        assert spec["enableInTreeAutoscaling"] is True, name
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", name
        (gpu,) = spec["workerGroupSpecs"]
        assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1, name
        container = gpu["template"]["spec"]["containers"][0]
        limit = container["resources"]["limits"]["nvidia.com/gpu"]
        assert gpu["rayStartParams"]["num-gpus"] == str(limit), name
        # One cluster shape everywhere: the job's and the service's clusters equal raycluster.yaml.
        assert spec == manifest("raycluster.yaml")["spec"], f"{name} drifted from raycluster.yaml"


def test_rayjob_runs_stf_train_and_shuts_down():
    job = manifest("rayjob-train.yaml")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    command, verb, spec_file = job["entrypoint"].split()[:3]
    assert (command, verb) == ("stf", "train") and (ROOT / spec_file).exists()


def test_rayservice_application_is_our_serve_app_and_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    from pipelines.serve.job import app_builder
    from pipelines.serve.spec import ServeSpec

    config = yaml.safe_load(manifest("rayservice.yaml")["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema
    (app,) = config["applications"]
    assert app["import_path"] == "pipelines.serve.job:app_builder"
    spec = ServeSpec.model_validate(app["args"])
    assert spec.deployment.num_gpus == 1 and spec.deployment.autoscaling_config["min_replicas"] >= 1
    application = app_builder(app["args"])  # builds the bound deployment without a cluster
    assert type(application).__name__ == "Application"


def test_every_node_runs_serve_with_haproxy_ingress():
    """Serve's controller, the ingress on each node and the replicas each read the switch from
    their own environment: a replica on a node without it would not serve HTTP itself, and
    HAProxy would have no port to send its requests to."""
    pods = []
    for name, spec in cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        pods += [(name, c) for g in groups for c in g["template"]["spec"]["containers"]]
    for name, container in pods:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", (name, container["name"])
    starts = ray_starts(launcher())
    assert len(starts) == 2
    assert all(env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" for env, _ in starts)


def _launcher_validator() -> jsonschema.Draft7Validator:
    import ray

    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return jsonschema.Draft7Validator(json.loads(schema_path.read_text()))


def test_cluster_launcher_yaml_matches_rays_schema():
    config = launcher()
    validator = _launcher_validator()
    assert [e.message for e in validator.iter_errors(config)] == []
    assert config["provider"]["type"] == "aws" and config["idle_timeout_minutes"] > 0
    workers = {
        k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]
    }
    assert workers and all(
        v["min_workers"] == 0 and v["resources"].get("GPU", 0) >= 1 for v in workers.values()
    )
    broken = copy.deepcopy(config)
    broken["idle_timeout_minutes"] = "soon"
    assert list(validator.iter_errors(broken))


@pytest.mark.parametrize("path", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_example_specs_validate(path):
    from pipelines.jobs import spec_class
    from pipelines.spec import load_spec

    job = path.split("-")[0]
    spec = load_spec(spec_class(job), str(ROOT / "examples" / path), [])
    if "cloud" in path and job == "train":
        assert spec.scaling.use_gpu and spec.deepspeed.zero_stage == 2
        assert spec.deepspeed.precision == "bf16" and spec.storage_path.startswith("s3://")
