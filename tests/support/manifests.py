"""Reading what `cluster/` ships: the KubeRay manifests, the RayCluster spec inside each, and the
cluster launcher's config with its `ray start` commands."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
KUBERAY = {
    "raycluster.yaml": "RayCluster",
    "rayjob-train.yaml": "RayJob",
    "rayservice.yaml": "RayService",
}
# Where each KubeRay manifest holds its RayCluster spec.
CLUSTER_SPEC_AT = {
    "raycluster.yaml": ("spec",),
    "rayjob-train.yaml": ("spec", "rayClusterSpec"),
    "rayservice.yaml": ("spec", "rayClusterConfig"),
}


def manifest(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def cluster_spec(document: dict, name: str) -> dict:
    """The RayCluster spec inside the manifest ``document`` read from ``name``."""
    spec = document
    for key in CLUSTER_SPEC_AT[name]:
        spec = spec[key]
    return spec


def cluster_specs() -> list[tuple[str, dict]]:
    """Each KubeRay manifest's RayCluster spec, by file name."""
    return [(name, cluster_spec(manifest(name), name)) for name in KUBERAY]


def launcher() -> dict:
    return manifest("aws-cluster.yaml")


def ray_starts(config: dict) -> list[tuple[dict[str, str], str]]:
    """The launcher's `ray start` commands: the variables each sets before it, and the rest."""
    starts = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for command in config[key]:
            if "ray start" not in command:
                continue
            prefix, _, rest = command.partition("ray start")
            env = dict(word.split("=", 1) for word in prefix.split())
            starts.append((env, "ray start" + rest))
    return starts
