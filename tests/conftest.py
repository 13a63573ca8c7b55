import os

# No hub access on these machines: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Downloads of s3:// model directories go to a per-session cache, not the user's home (set before
# Ray starts, so its workers inherit it).
os.environ.setdefault("STF_CACHE", __import__("tempfile").mkdtemp(prefix="stf-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def tiny():
    """A random tiny model (window 2, 4 MBTF blocks) and its tokenizer."""
    from stf_model import build_tiny

    return build_tiny(seed=0)


@pytest.fixture
def uint8_images():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=gen)


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray for the whole session (loopback only); yields its GCS address so a
    second driver (a CLI subprocess) can join it."""
    import shutil
    import tempfile

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    temp_dir = tempfile.mkdtemp(prefix="ray-")  # short: Ray's socket paths have a length limit
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 protocol server on 127.0.0.1 (a real HTTP endpoint, not an in-process mock);
    yields its endpoint URL and stops it at the end."""
    import shutil
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or "moto_server"
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
