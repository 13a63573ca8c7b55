"""The library tests (``make test-lib``): ``stf_model`` alone, with no Ray and no pipelines.

When only these tests run, the session fails if anything imported Ray or the pipelines, so a
library test (or the library) that starts needing them is caught here. DeepSpeed is not in the
list: transformers imports it itself when it loads a model and finds it installed; that the
library's own modules import none of the three is `tests/test_structure.py`'s to check.
"""

import sys
from pathlib import Path

FORBIDDEN = ("ray", "pipelines")


def pytest_sessionfinish(session, exitstatus):
    here = Path(__file__).parent
    items = getattr(session, "items", [])
    if not items or not all(here in Path(item.path).parents for item in items):
        return  # run with other groups: they may import anything
    loaded = [name for name in FORBIDDEN if name in sys.modules]
    if loaded:
        print(f"\nthe library tests imported {', '.join(loaded)}: stf_model must not need them")
        session.exitstatus = 1
