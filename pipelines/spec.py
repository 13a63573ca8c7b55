"""Job specs: pydantic models read from YAML, with ``--set dotted.key=value`` overrides.

Every job (preprocess, train, serve, infer, eval, synth, convert) declares a :class:`JobSpec`
subclass; the CLI calls :func:`load_spec` once, at the edge, and passes the typed object down.
Overrides are merged into the YAML mapping before validation, so they are checked exactly like the
file. The field types and option blocks that several jobs share live here too.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)

from pipelines.errors import SpecError
from stf_model.constants import PRESET_NAMES

SpecT = TypeVar("SpecT", bound="JobSpec")


class JobSpec(BaseModel):
    """Base of every spec: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def resolved(self) -> dict[str, Any]:
        """The spec as plain JSON types, secrets masked: what a job writes next to its outputs."""
        return self.model_dump(mode="json")


class StorageOptions(JobSpec):
    """Where ``s3://`` paths live. Unset fields fall back to the standard AWS environment
    variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``, profiles), exactly as boto would read them."""

    endpoint_url: str | None = Field(None, description="S3 endpoint (default: AWS_ENDPOINT_URL)")
    region: str | None = Field(None, description="S3 region (default: AWS_DEFAULT_REGION)")
    access_key_id: SecretStr | None = Field(None, description="default: AWS_ACCESS_KEY_ID")
    secret_access_key: SecretStr | None = Field(None, description="default: AWS_SECRET_ACCESS_KEY")
    anon: bool = Field(False, description="unsigned requests (public buckets)")
    max_attempts: int | None = Field(
        None,
        ge=1,
        description="tries per S3 request, with exponential backoff of up to 20 s between "
        "them (default: AWS_MAX_ATTEMPTS, else 10: rides out an outage of about a minute)",
    )

    def s3fs_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem``."""
        # botocore's own retries are the ones that see a refused or dropped connection (s3fs
        # retries only read errors); its defaults give up after about 5 s, so a blip of the
        # object store would fail a training step or a checkpoint.
        attempts = self.max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or 10)
        mode = os.environ.get("AWS_RETRY_MODE") or "standard"
        options: dict[str, Any] = {
            "anon": self.anon,
            "config_kwargs": {"retries": {"max_attempts": attempts, "mode": mode}},
        }
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint or os.environ.get("AWS_ENDPOINT_URL"):
            options["endpoint_url"] = endpoint or os.environ["AWS_ENDPOINT_URL"]
        if self.access_key_id is not None:
            options["key"] = self.access_key_id.get_secret_value()
        if self.secret_access_key is not None:
            options["secret"] = self.secret_access_key.get_secret_value()
        if self.region:
            options["client_kwargs"] = {"region_name": self.region}
        return options


def absolute(url: str) -> str:
    """Local paths made absolute (workers on other nodes or in other folders must read the same
    place); ``s3://`` URLs unchanged."""
    return url if url.startswith("s3://") else os.path.abspath(os.path.expanduser(url))


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _model_ref(value: str) -> str:
    return value if value in PRESET_NAMES else absolute(value)


# Spec field types: a location is a local path (made absolute) or an s3:// URL; a list of them
# also accepts one string; a model reference is a preset name or a model directory location.
Location = Annotated[str, AfterValidator(absolute)]
Locations = Annotated[list[Location], BeforeValidator(_one_or_many), Field(min_length=1)]
ModelRef = Annotated[str, AfterValidator(_model_ref)]

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


class InferenceModel(JobSpec):
    """Which model to run, and on what."""

    path: Location = Field(description="exported model directory (stf train's RUN/model), or s3://")
    adapter: Location | None = Field(
        None,
        description="a LoRA adapter folder (stf train's RUN/adapter) to apply to path, the model "
        "it was trained from (merged on load)",
    )
    dtype: Dtype = Field(
        "auto", description="weights dtype; auto = bfloat16 on a GPU that supports it, else float32"
    )
    device: Device = Field("auto", description="auto = cuda when this process has a GPU")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value); the value is read as YAML (``3``, ``true``, ``[1, 2]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError(
            f"--set {text!r}: the value is not valid YAML ({_yaml_problem(err)})"
        ) from err
    return key.strip().split("."), value


def _yaml_problem(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return where + (getattr(err, "problem", None) or str(err).splitlines()[0])


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``data`` with each ``dotted.key=value`` set (intermediate maps created)."""
    merged = yaml.safe_load(yaml.safe_dump(data)) or {}
    for text in overrides:
        keys, value = parse_override(text)
        node = merged
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise SpecError(f"--set {text!r}: {where} is {child!r}, not a mapping")
            node = child
        node[keys[-1]] = value
    return merged


def load_spec(cls: type[SpecT], path: str | os.PathLike | None, overrides: list[str] = ()) -> SpecT:
    """Reads a YAML spec (or starts from ``{}`` when ``path`` is None), applies overrides and
    validates. Raises :class:`SpecError` with one readable paragraph."""
    source = str(path) if path is not None else "--set values"
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError as err:
            raise SpecError(f"spec file {source} does not exist") from err
        except yaml.YAMLError as err:
            raise SpecError(f"{source} is not valid YAML: {_yaml_problem(err)}") from err
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a spec is a mapping of keys, got {type(data).__name__}")
    data = apply_overrides(data, list(overrides))
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(source, cls, err)) from err


def format_validation_error(source: str, cls: type[BaseModel], err: ValidationError) -> str:
    """One paragraph: every failing key with its problem and the value given."""
    problems = []
    for e in err.errors():
        key = ".".join(str(part) for part in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r} (check the spelling; see `stf spec`)")
        elif e["type"] == "missing":
            problems.append(f"key {key!r} is required")
        else:
            problems.append(f"key {key!r}: {e['msg']} (got {e.get('input')!r:.80})")
    return f"{source}: invalid {cls.__name__}: " + "; ".join(problems) + "."


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def spec_reference(cls: type[BaseModel], indent: int = 0) -> str:
    """A commented YAML skeleton of a spec, generated from its fields (so it cannot drift):
    each key with its description, its default, or ``# required``."""
    pad = " " * indent
    lines = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        nested = _is_model(annotation)
        optional = [a for a in typing.get_args(annotation) if _is_model(a)]
        if field.description:
            lines.append(f"{pad}# {field.description}")
        if nested:
            lines.append(f"{pad}{name}:")
            lines.append(spec_reference(annotation, indent + 2))
        elif optional and field.default is None:  # an optional block: its keys, commented out
            lines.append(f"{pad}# {name}:")
            block = spec_reference(optional[0], 2).splitlines()
            lines.extend(f"{pad}# {line}" for line in block)
        elif field.is_required():
            lines.append(f"{pad}{name}:  # required")
        else:
            default = field.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):
                default = "<secret>"
            value = yaml.safe_dump(default, default_flow_style=True).strip()
            value = value.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{name}: {value}")
    return "\n".join(lines)
