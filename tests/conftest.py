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
