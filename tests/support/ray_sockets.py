"""What a Ray on this machine listens on, and whether each listener lets in a client that has no
token: as a neighbour on the network would try it (or a process of another user on the machine).

A gRPC listener is asked one read-only call of each of Ray's services (GCS, raylet, object manager,
core worker, dashboard agent, Ray Client, metrics, Serve's replicas), with no ``authorization`` metadata; Ray's token
check answers UNAUTHENTICATED, a service that is not there UNIMPLEMENTED, and anything else means
the call got in. An HTTP listener is sent a GET: 401 or 403 is a refusal; a Prometheus metrics page
(read-only) is reported as such; any other answer got in.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import grpc
import psutil
import requests

# One harmless call per Ray gRPC service (an empty request; the services read, none of them acts).
PROBES = (
    "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",
    "/ray.rpc.NodeManagerService/GetNodeStats",
    "/ray.rpc.ObjectManagerService/Pull",
    "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",
    "/ray.rpc.LogService/ListLogs",
    "/ray.rpc.ReporterService/GetTraceback",
    "/ray.rpc.RayletDriver/ClusterInfo",
    "/ray.rpc.MetricsService/Export",
    "/ray.serve.ASGIService/HandleRequest",
)


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host.removeprefix("::ffff:")).is_loopback

    def __str__(self) -> str:
        return f"{self.process} (pid {self.pid}) on {self.host}:{self.port}"


def ray_processes(root: psutil.Process) -> list[psutil.Process]:
    """``root`` and the processes under it that belong to Ray (a moto server or a browser the
    tests started are left out)."""
    found = [root]
    for child in root.children(recursive=True):
        try:
            if "ray" in " ".join(child.cmdline()).lower():
                found.append(child)
        except psutil.Error:
            continue
    return found


def listeners(processes: list[psutil.Process]) -> list[Listener]:
    """Every listening TCP socket of ``processes``."""
    pids = {p.pid: p for p in processes}
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or conn.pid not in pids:
            continue
        try:
            name = pids[conn.pid].name()
        except psutil.Error:
            continue
        found.append(Listener(conn.pid, name, conn.laddr.ip, conn.laddr.port))
    return sorted(found, key=lambda x: x.port)


def network_address() -> str | None:
    """This machine's first IPv4 address that is not loopback: where a neighbour connects."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def target(listener: Listener) -> str:
    """Where a client reaches ``listener``: its own address, or for a wildcard bind this
    machine's network address (loopback when it has none)."""
    host = listener.host.removeprefix("::ffff:")
    if host in ("0.0.0.0", "::"):
        host = network_address() or "127.0.0.1"
    return f"[{host}]:{listener.port}" if ":" in host else f"{host}:{listener.port}"


def probe(address: str, token: str | None = None, timeout_s: float = 3.0) -> str:
    """What a client at ``address`` gets: "refused", "metrics" (a read-only Prometheus page),
    "closed" (nothing answers), or "accepted: ..." naming what let it in."""
    http = _probe_http(address, token, timeout_s)
    if http is not None:
        return http
    return _probe_grpc(address, token, timeout_s)


def _probe_http(address: str, token: str | None, timeout_s: float) -> str | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = requests.get(f"http://{address}/", headers=headers, timeout=timeout_s)
    except requests.RequestException:
        return None  # not HTTP/1 (gRPC speaks HTTP/2 only)
    if answer.status_code in (401, 403):
        return "refused"
    if answer.text.lstrip().startswith("# HELP") or "/metrics" in answer.text[:2000]:
        return "metrics"
    return f"accepted: HTTP {answer.status_code}"


def _probe_grpc(address: str, token: str | None, timeout_s: float) -> str:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    outcomes = set()
    with grpc.insecure_channel(address) as channel:
        for method in PROBES:
            call = channel.unary_unary(method)
            try:
                call(b"", timeout=timeout_s, metadata=metadata)
                return f"accepted: {method}"
            except grpc.RpcError as err:
                code = err.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return "refused"
            if code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                return f"accepted: {method} answered {code.name}"
            outcomes.add(code)
    return "closed" if outcomes == {grpc.StatusCode.UNAVAILABLE} else "unknown service"
