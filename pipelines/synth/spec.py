"""``stf synth``'s spec."""

from __future__ import annotations

from pydantic import Field, PositiveInt, field_validator

from pipelines.spec import JobSpec, Location


class SynthSpec(JobSpec):
    """Writes the synthetic shapes corpus (the demo's and the tests' data)."""

    output: Location = Field(description="output directory (local)")
    n: PositiveInt = Field(1000, description="training images")
    n_eval: int | None = Field(None, ge=0, description="held-out questions (default n/5, >= 20)")
    seed: int = 0
    width: int = Field(96, ge=16, description="image width in pixels")
    height: int = Field(72, ge=16, description="image height in pixels")

    @field_validator("output")
    @classmethod
    def _local(cls, value: str) -> str:
        if value.startswith("s3://"):
            raise ValueError("the synthetic corpus is written to a local folder; upload it after")
        return value
