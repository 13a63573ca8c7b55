"""`stf eval` in the tests: a spec from keyword fields, paths and lists of paths given as the
strings a YAML spec holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.eval.spec import EvalSpec


def eval_spec(**fields: Any) -> EvalSpec:
    def plain(value: Any) -> Any:
        if isinstance(value, list):
            return [str(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return EvalSpec.model_validate({key: plain(value) for key, value in fields.items()})
