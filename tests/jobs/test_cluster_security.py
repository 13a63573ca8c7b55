"""Read as an attacker would: every cluster `cluster/` ships requires Ray's token, binds nothing
beyond the cluster without authentication, and keeps no secret in a manifest. Each rule is a
checker that lists problems; the shipped files have none, and broken copies of them are caught."""

from __future__ import annotations

import copy
import re
from pathlib import PurePosixPath

import pytest
import yaml
from support.manifests import CLUSTER, KUBERAY, cluster_spec, launcher, manifest, ray_starts

# Environment variables whose literal value in a manifest would be a secret.
SECRET_NAMES = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
# GCS, Ray Client, Serve, dashboard (the Jobs API): each runs code or answers for the cluster.
CLUSTER_PORTS = (6379, 10001, 8000, 8265)
WORLD = ("0.0.0.0/0", "::/0")


def kuberay_problems(name: str, spec: dict) -> list[str]:
    """What exposes the RayCluster ``spec`` (from the manifest ``name``)."""
    problems = []
    auth = spec.get("authOptions") or {}
    if auth.get("mode") != "token":
        problems.append(f"{name}: authOptions.mode is {auth.get('mode')!r}, not 'token'")
    if not auth.get("secretName"):
        problems.append(f"{name}: authOptions.secretName is unset (where is the token?)")
    head = spec["headGroupSpec"]
    if head.get("serviceType", "ClusterIP") != "ClusterIP":
        problems.append(f"{name}: the head Service is {head['serviceType']}, not ClusterIP")
    if head.get("enableIngress"):
        problems.append(f"{name}: enableIngress publishes the dashboard")
    for group in (head, *spec.get("workerGroupSpecs", [])):
        problems += _pod_problems(f"{name} {group.get('groupName', 'head')}", group["template"])
    return problems


def _pod_problems(where: str, template: dict) -> list[str]:
    pod = template["spec"]
    problems = (
        [f"{where}: hostNetwork binds the node's interfaces"] if pod.get("hostNetwork") else []
    )
    for container in pod.get("initContainers", []) + pod["containers"]:
        at = f"{where} {container['name']}"
        problems += [
            f"{at}: hostPort {p['hostPort']}" for p in container.get("ports", []) if "hostPort" in p
        ]
        for env in container.get("env", []):
            if env["name"] == "RAY_AUTH_MODE" and env.get("value") != "token":
                problems.append(f"{at}: RAY_AUTH_MODE={env.get('value')}")
            elif SECRET_NAMES.search(env["name"]) and "value" in env:
                problems.append(f"{at}: {env['name']} has a literal value (a secret in a manifest)")
    return problems


def serve_key_problems(document: dict) -> list[str]:
    """The RayService's API key: required by the application, read from a Secret on every node."""
    config = yaml.safe_load(document["spec"]["serveConfigV2"])
    problems = []
    for app in config["applications"]:
        args = app.get("args", {})
        if "api_key" in args:
            problems.append(f"{app['name']}: api_key is written in the manifest")
        if args.get("require_api_key") is not True:
            problems.append(f"{app['name']}: require_api_key is not true")
        variable = args.get("api_key_env", "STF_API_KEY")
        spec = cluster_spec(document, "rayservice.yaml")
        for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
            for container in group["template"]["spec"]["containers"]:
                env = {e["name"]: e for e in container.get("env", [])}
                if "secretKeyRef" not in env.get(variable, {}).get("valueFrom", {}):
                    problems.append(f"{container['name']}: {variable} does not come from a Secret")
    return problems


def launcher_problems(config: dict) -> list[str]:
    """What exposes the cluster launcher's nodes: Ray started without the token, the token kept
    in the repository, cluster ports open to the world."""
    problems = []
    mounts = config.get("file_mounts", {})
    for env, command in ray_starts(config):
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{command[:40]}...: RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}")
        if "RAY_AUTH_TOKEN" in env:
            problems.append(f"{command[:40]}...: the token is written in the config")
        path = env.get("RAY_AUTH_TOKEN_PATH")
        source = mounts.get(path)
        if source is None:
            problems.append(f"{command[:40]}...: the token file {path} is not provisioned")
        elif not (source.startswith("~") or PurePosixPath(source).is_absolute()):
            problems.append(f"the token file comes from {source}, inside the repository")
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
        ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        every_port = rule.get("IpProtocol") == "-1"
        ports = [p for p in CLUSTER_PORTS if every_port or rule["FromPort"] <= p <= rule["ToPort"]]
        if ports and any(cidr in WORLD for cidr in ranges):
            problems.append(f"security group opens {ports} to {ranges}")
    return problems


def test_every_shipped_cluster_requires_the_token_and_exposes_nothing():
    problems = []
    for name in KUBERAY:
        problems += kuberay_problems(name, cluster_spec(manifest(name), name))
    problems += serve_key_problems(manifest("rayservice.yaml"))
    problems += launcher_problems(launcher())
    assert problems == []


def test_the_launcher_opens_no_cluster_port_by_default():
    """Beyond the intra-cluster and SSH rules Ray adds itself: none, until the user adds a CIDR."""
    assert launcher()["provider"]["security_group"]["IpPermissions"] == []


def _broken_kuberay(change) -> list[str]:
    document = copy.deepcopy(manifest("raycluster.yaml"))
    change(cluster_spec(document, "raycluster.yaml"))
    return kuberay_problems("raycluster.yaml", cluster_spec(document, "raycluster.yaml"))


def _head_env(spec: dict) -> list:
    return spec["headGroupSpec"]["template"]["spec"]["containers"][0].setdefault("env", [])


@pytest.mark.parametrize(
    "change",
    [
        lambda spec: spec.pop("authOptions"),
        lambda spec: spec["authOptions"].update(mode="disabled"),
        lambda spec: spec["headGroupSpec"].update(serviceType="LoadBalancer"),
        lambda spec: spec["headGroupSpec"].update(enableIngress=True),
        lambda spec: spec["headGroupSpec"]["template"]["spec"].update(hostNetwork=True),
        lambda spec: _head_env(spec).append({"name": "RAY_AUTH_MODE", "value": "disabled"}),
        lambda spec: _head_env(spec).append({"name": "RAY_AUTH_TOKEN", "value": "abc"}),
        lambda spec: spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"].append(
            {"containerPort": 8265, "hostPort": 8265}
        ),
    ],
)
def test_the_kuberay_checks_catch_an_exposed_cluster(change):
    assert _broken_kuberay(change)


def test_the_serve_key_checks_catch_a_key_in_the_manifest_or_none_required():
    for change in ("api_key: sk-123", "require_api_key: false"):
        document = copy.deepcopy(manifest("rayservice.yaml"))
        config = document["spec"]["serveConfigV2"]
        key = change.split(":")[0]
        lines = [line for line in config.splitlines() if f" {key}:" not in line]
        indent = next(line for line in lines if "api_key_env:" in line).split("api_key_env")[0]
        lines.append(f"{indent}{change}")
        document["spec"]["serveConfigV2"] = "\n".join(lines)
        assert serve_key_problems(document), change
    document = copy.deepcopy(manifest("rayservice.yaml"))
    spec = cluster_spec(document, "rayservice.yaml")
    spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"] = []
    assert serve_key_problems(document)


def test_the_launcher_checks_catch_an_open_port_or_a_committed_token():
    world = copy.deepcopy(launcher())
    world["provider"]["security_group"]["IpPermissions"] = [
        {
            "IpProtocol": "tcp",
            "FromPort": 8000,
            "ToPort": 9000,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        }
    ]
    every = copy.deepcopy(launcher())
    every["provider"]["security_group"]["IpPermissions"] = [
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    ]
    office = copy.deepcopy(launcher())
    office["provider"]["security_group"]["IpPermissions"] = [
        {
            "IpProtocol": "tcp",
            "FromPort": 8265,
            "ToPort": 8265,
            "IpRanges": [{"CidrIp": "203.0.113.0/24"}],
        }
    ]
    assert launcher_problems(world) and launcher_problems(every)
    assert launcher_problems(office) == []  # a CIDR the user chose
    unauthenticated = copy.deepcopy(launcher())
    unauthenticated["head_start_ray_commands"] = [
        c.replace("RAY_AUTH_MODE=token ", "") for c in unauthenticated["head_start_ray_commands"]
    ]
    committed = copy.deepcopy(launcher())
    (path,) = {env["RAY_AUTH_TOKEN_PATH"] for env, _ in ray_starts(committed)}
    committed["file_mounts"][path] = "cluster/auth_token"
    assert launcher_problems(unauthenticated) and launcher_problems(committed)


def test_every_shipped_manifest_is_one_these_checks_read():
    """A manifest added to cluster/ fails here until the checks above cover it."""
    shipped = {path.name for path in CLUSTER.glob("*.y*ml")}
    assert shipped == set(KUBERAY) | {"aws-cluster.yaml"}
