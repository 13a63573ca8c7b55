import os

# No hub access on these machines: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
