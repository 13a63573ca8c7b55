"""Serving overhead and batching: the Ray Serve path vs a direct in-process generate on the same
request, and throughput at concurrency 1 vs 16.

Latency: the same chat request (one image, greedy, fixed max_tokens) `--requests` times, one at a
time, through (a) `ChatGenerator.generate` in this process and (b) HTTP -> Serve's proxy -> the
replica. Overhead = p50(b) - p50(a), next to Serve's own hop (p50 of `GET /health`: proxy ->
replica -> back with no work). The replica's /stats medians then split a request's time: Serve's
share (outside our route, plus reading the body, which the replica fetches back from the proxy),
ours (the rest of the route but `generate`: intake, batching, response), and `generate` itself in
the replica against in process. Throughput: `--load` requests with 1 and with 16 client threads.
Both are measured with the spec's batch wait and with a zero wait (a lone request runs at once
either way: the window only applies while other requests are in flight).

Each is measured with both of Ray's HTTP ingresses, one local Ray each: Serve's Python proxy (Ray's
default), and HAProxy in front of the replicas, which then serve HTTP themselves (Ray >= 2.55,
`RAY_SERVE_ENABLE_HA_PROXY=1` where Ray starts; HAProxy's binary comes with ray[serve]). HAProxy's
stats and metrics listeners bind every interface (ports 8404 and 9101), which is why the tests and
the local default keep the proxy.

    python bench/serve.py [--model DIR] [--requests 60] [--load 160] [--max-tokens 16]
                          [--ingress proxy,haproxy]
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import io
import json
import os
import socket
import statistics
import tempfile
import time

import ray
import requests
import torch
from PIL import Image

from pipelines.ray_env import start_local_ray


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _haproxy_running() -> bool:
    """Whether an HAProxy process runs on this machine (so the HAProxy rows measure HAProxy)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == "haproxy":
                    return True
        except OSError:  # the process ended while we looked
            continue
    return False


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: a random tiny model)")
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--load", type=int, default=160)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--batch-wait", type=float, default=0.02, help="the spec's batch wait (s)")
    parser.add_argument("--ingress", default="proxy,haproxy", help="which of Ray's HTTP ingresses")
    args = parser.parse_args()

    from ray import serve

    from pipelines.models import load_generator
    from pipelines.serve import ServeSpec
    from pipelines.serve.job import run
    from pipelines.spec import InferenceModel, StorageOptions
    from stf_model import build_tiny, save_model_dir
    from stf_model.generation import ChatPrompt, SamplingParams

    tmp = tempfile.mkdtemp(prefix="bench-serve-")
    model_dir = args.model or f"{tmp}/tiny"
    if not args.model:
        save_model_dir(*build_tiny(seed=0), model_dir)
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), (30, 140, 200)).save(buffer, format="JPEG")
    image_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": "How many shapes?"},
            ],
        }
    ]
    body = {"messages": messages, "max_tokens": args.max_tokens, "temperature": 0}

    # (a) direct, in this process: decode the image and generate, as the replica does per request.
    from stf_model.processing import decode_image

    generator = load_generator(InferenceModel(path=model_dir), StorageOptions())
    text = generator.render(messages)
    direct, direct_decode = [], []
    for _ in range(args.requests):
        start = time.perf_counter()
        image = decode_image(base64.b64decode(image_url.split(",", 1)[1]), 40_000_000)
        decoded = time.perf_counter()
        params = SamplingParams(args.max_tokens, temperature=0)
        generator.generate([ChatPrompt(text, [image], params)])
        direct.append(time.perf_counter() - start)
        direct_decode.append(decoded - start)

    results = {}
    ingresses = args.ingress.split(",")
    if not set(ingresses) <= {"proxy", "haproxy"}:
        parser.error(f"--ingress: proxy and/or haproxy, not {args.ingress!r}")
    for ingress in ingresses:
        # Ray's switch, read by Serve's controller, proxies and replicas when they start: set it
        # before this Ray starts. The short drain only keeps the second deployment from waiting
        # out a stopping replica's 30 s (a cluster keeps it, for HAProxy to stop routing there).
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1" if ingress == "haproxy" else "0"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
        for wait in (args.batch_wait, 0.0):
            # A fresh Ray for each, so that no measurement runs beside what an earlier one left
            # (on one Ray, the second deployment's `generate` was 0.8-2.5 ms slower than the
            # first's in five of six pairs; on fresh ones the spread stayed as wide).
            start_local_ray(include_dashboard=False, log_to_driver=False)
            port = _free_port()
            spec = ServeSpec.model_validate(
                {
                    "model": {"path": model_dir},
                    "port": port,
                    # As many CPUs (so torch threads: Ray sets OMP_NUM_THREADS) as the direct path.
                    "deployment": {
                        "max_ongoing_requests": 32,
                        "max_queued_requests": -1,
                        "num_cpus": torch.get_num_threads(),
                    },
                    "batching": {"max_batch_size": 16, "batch_wait_timeout_s": wait},
                    "limits": {"max_tokens": max(args.max_tokens, 16), "default_max_tokens": 16},
                }
            )
            base = run(spec, blocking=False)
            if ingress == "haproxy" and not _haproxy_running():
                raise SystemExit("RAY_SERVE_ENABLE_HA_PROXY=1 started no HAProxy process")
            url = base + "/v1/chat/completions"
            session = requests.Session()
            for _ in range(5):  # warm-up
                session.post(url, json=body, timeout=60).raise_for_status()
            hop = []
            for _ in range(args.requests):
                start = time.perf_counter()
                session.get(base + "/health", timeout=60).raise_for_status()
                hop.append(time.perf_counter() - start)
            served = []
            for _ in range(args.requests):
                start = time.perf_counter()
                session.post(url, json=body, timeout=60).raise_for_status()
                served.append(time.perf_counter() - start)
            # The replica's own medians over these requests: the route, and generate within it.
            stats = session.get(base + "/stats", timeout=60).json()

            def load(concurrency: int, url: str = url) -> float:
                def one(_):
                    requests.post(url, json=body, timeout=120).raise_for_status()

                start = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                    list(pool.map(one, range(args.load)))
                return args.load / (time.perf_counter() - start)

            rps1, rps16 = load(1), load(16)
            results[ingress, wait] = {
                "p50": statistics.median(served),
                "p95": _percentile(served, 0.95),
                "hop_p50": statistics.median(hop),
                "route_p50": stats["handler_ms_p50"] / 1e3,
                "body_p50": stats["body_ms_p50"] / 1e3,
                "replica_generate_p50": stats["generate_ms_p50"] / 1e3,
                "rps1": rps1,
                "rps16": rps16,
            }
            serve.shutdown()
            ray.shutdown()

    d50, d95 = statistics.median(direct), _percentile(direct, 0.95)
    print(f"one request: 1 image, {args.max_tokens} greedy tokens, {args.requests} times")
    print(
        f"{'path':<40}{'p50 ms':>9}{'p95 ms':>9}{'overhead p50':>14}"
        f"{'Serve hop p50':>15}{'handler p50':>13}"
    )
    print(f"{'direct generate (in process)':<40}{d50 * 1e3:>9.1f}{d95 * 1e3:>9.1f}")
    for (ingress, wait), r in results.items():
        label = f"{ingress}, batch wait {wait * 1e3:.0f} ms"
        overhead = r["p50"] - d50
        print(
            f"{label:<40}{r['p50'] * 1e3:>9.1f}{r['p95'] * 1e3:>9.1f}"
            f"{overhead * 1e3:>11.1f} ms{r['hop_p50'] * 1e3:>12.1f} ms"
            f"{(overhead - r['hop_p50']) * 1e3:>10.1f} ms"
        )
    decode50 = statistics.median(direct_decode)
    print(
        "\nwhere a lone request's overhead goes (p50 ms). Serve's: outside our route (client -"
        " route) plus reading the body inside it (through the proxy, the replica fetches it back"
        " from the proxy). Ours: the"
        " rest of the route but generate, less the image decoding the direct path does as well"
        f" ({decode50 * 1e3:.2f} ms). Slower generate: generate in the replica less in this process."
    )
    print(f"{'':<40}{'Serve':>7}{'ours':>7}{'slower generate':>17}")
    for (ingress, wait), r in results.items():
        label = f"{ingress}, batch wait {wait * 1e3:.0f} ms"
        serve_share = r["p50"] - r["route_p50"] + r["body_p50"]
        ours = r["route_p50"] - r["body_p50"] - r["replica_generate_p50"] - decode50
        slower = r["replica_generate_p50"] - (d50 - decode50)
        print(f"{label:<40}{serve_share * 1e3:>7.1f}{ours * 1e3:>7.1f}{slower * 1e3:>17.1f}")
    print(f"\n{'throughput':<40}{'c=1 req/s':>11}{'c=16 req/s':>12}{'ratio':>8}")
    for (ingress, wait), r in results.items():
        label = f"{ingress}, batch wait {wait * 1e3:.0f} ms"
        print(f"{label:<40}{r['rps1']:>11.1f}{r['rps16']:>12.1f}{r['rps16'] / r['rps1']:>7.2f}x")
    print(
        json.dumps(
            {
                "direct_p50_ms": d50 * 1e3,
                "direct_p95_ms": d95 * 1e3,
                "direct_decode_p50_ms": decode50 * 1e3,
                "serve": {f"{ingress} {wait}": r for (ingress, wait), r in results.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
