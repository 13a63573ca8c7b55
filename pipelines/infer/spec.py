"""The batch-inference job's spec."""

from __future__ import annotations

import posixpath
import string

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator

from pipelines.spec import InferenceModel, JobSpec, Location, Locations, StorageOptions


class GenerationOptions(JobSpec):
    """How a model answers rows: the system message, decoding, batching and its replicas."""

    system: str | None = Field(None, description="a system message before each prompt")
    max_new_tokens: PositiveInt = Field(64, description="tokens generated per row at most")
    temperature: NonNegativeFloat = Field(0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: PositiveInt = Field(8, description="rows per generate call")
    concurrency: PositiveInt = Field(1, description="model replicas (actors)")
    num_cpus: float = Field(1.0, ge=0, description="CPUs each replica reserves")
    num_gpus: float = Field(0.0, ge=0, description="GPUs each replica reserves")
    schedule_timeout_s: PositiveFloat = Field(
        1800, description="on a cluster, seconds to wait for the replicas to start before giving up"
    )
    rows_per_file: PositiveInt = Field(
        256, description="rows per output Parquet file (also the resume granularity)"
    )
    max_image_pixels: PositiveInt = Field(
        40_000_000, description="pixel limit per image, padded to a square (bomb guard)"
    )


class InferSpec(GenerationOptions):
    """Batch generation over images (folders, globs, or Parquet/JSONL tables of image paths)."""

    model: InferenceModel = Field(description="the model directory and where it runs")
    model_id: str | None = Field(None, description="recorded with each answer (default: dir name)")
    inputs: Locations = Field(
        description="image folders, image globs, or .parquet/.jsonl tables (local or s3://)"
    )
    output: Location = Field(description="output directory (parts/*.parquet, summary.json)")
    image_root: Location | None = Field(
        None, description="tables: relative image paths resolve here (default: the table's folder)"
    )
    id_column: str = Field("id", description="tables: the row id column")
    image_column: str = Field("image", description="tables: the image path column")
    text_only_rows: bool = Field(
        False, description="tables: a row whose image is empty is asked without an image"
    )
    prompt_column: str = Field("prompt", description="tables: per-row prompt column, if present")
    prompt: str = Field("Describe this image.", description="the prompt of rows without their own")
    prompt_template: str = Field(
        "{prompt}",
        description="wraps each row's prompt; may name other table columns, e.g. "
        "'{prompt} Answer with one word.' or 'Question: {question}'",
    )
    limit: PositiveInt | None = Field(None, description="only the first N rows (a quick look)")
    answers_jsonl: bool = Field(
        False, description="also write answers.jsonl in LLaVA's format (question_id, prompt, text)"
    )
    storage: StorageOptions = Field(default_factory=StorageOptions)

    @field_validator("prompt_template")
    @classmethod
    def _names_columns(cls, value: str) -> str:
        """Each ``{...}`` names a column, nothing else: ``{prompt.upper}`` would render a method's
        repr as the prompt, and ``{0}``, ``{}`` or a lone ``{`` fail on the first row."""
        try:
            fields = [f for f in string.Formatter().parse(value) if f[1] is not None]
        except ValueError as err:
            raise ValueError(f"not a format string ({err}); write {{{{ for a brace") from None
        for _, name, spec, conversion in fields:
            if not name.isidentifier() or spec or conversion:
                raise ValueError(
                    f"{{{name}...}}: each {{...}} names a column, as in '{{prompt}}' "
                    "(write {{ for a literal brace)"
                )
        return value

    @property
    def served_model_id(self) -> str:
        return self.model_id or posixpath.basename(self.model.path.rstrip("/")) or "stf"
