"""Refinery's own configuration: environment variables `REFINERY_*`, overridden by CLI flags.

Engine settings (everything `vllm serve` accepts) are not here: they are parsed by vLLM's own
argument parser in `server.cli`. This class holds what Refinery itself owns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_SERVED_MODEL_NAME", "Settings", "default_cache_dir"]

DEFAULT_SERVED_MODEL_NAME = "smollm2"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "refinery"


class Settings(BaseSettings):
    """Validated at start-up; a bad value stops the server with a clear message."""

    model_config = SettingsConfigDict(env_prefix="REFINERY_", extra="ignore", populate_by_name=True)

    model: str | None = Field(
        default=None,
        description="Model to serve (local path or hub id); empty = the embedded SmolLM2-135M.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients use in `model`; default `smollm2` or MODEL."
    )
    host: str = Field(default="0.0.0.0", description="Address to listen on.")
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port to listen on.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted bearer tokens (env: comma-separated). Empty = no authentication.",
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="Seconds in-flight requests may run on after SIGTERM before shutdown.",
    )
    max_samples: int = Field(
        default=64,
        ge=1,
        le=256,
        description="Server cap on the samples one strategy request may draw.",
    )
    max_refine_iterations: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Server cap on the refinement iterations one strategy request may run "
        "(self_refine, adaptive_refine); max_samples caps their total sub-requests.",
    )
    strategy_keepalive: float = Field(
        default=5.0,
        gt=0,
        le=60,
        description="Seconds between SSE keep-alive comments while a streamed strategy works.",
    )
    certainty: bool = Field(
        default=True,
        description="Exact self-certainty computed in vLLM's sampler by Refinery's plugin "
        "(on/off). Off: strategies use the top-20 logprob estimate.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        validation_alias=AliasChoices("REFINERY_CACHE", "REFINERY_CACHE_DIR"),
        description="Where the converted embedded model is kept.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _no_empty_keys(cls, value: list[str]) -> list[str]:
        if any(not key for key in value):
            raise ValueError("API keys must not be empty")
        return value
