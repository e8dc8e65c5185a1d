"""Refinery's own configuration: environment variables `REFINERY_*`, overridden by CLI flags.

Engine settings (everything `vllm serve` accepts) are not here: they are parsed by vLLM's own
argument parser in `server.cli`. This class holds what Refinery itself owns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["DEFAULT_SERVED_MODEL_NAME", "Settings", "default_cache_dir"]

DEFAULT_SERVED_MODEL_NAME = "smollm2"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "refinery"


class Settings(BaseSettings):
    """Validated at start-up; a bad value stops the server with a clear message."""

    # Inputs stay out of validation errors: an API key must never be printed.
    model_config = SettingsConfigDict(env_prefix="REFINERY_", extra="ignore", populate_by_name=True,
                                      hide_input_in_errors=True)

    model: str | None = Field(
        default=None,
        description="Model to serve: a built-in name (smollm2, qwen2.5-coder-1.5b), a local "
        "path or a hub id; empty = the embedded SmolLM2-135M (smollm2).",
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
        description="Server cap on the engine sequences one request may queue: the samples a "
        "strategy request may draw, or a plain request's n × prompts.",
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
    api_keys_file: Path | None = Field(
        default=None,
        description="A file of accepted bearer tokens (comma- or newline-separated; what a "
        "mounted Kubernetes Secret provides), added to api_keys; re-read when it changes.",
    )
    metrics_auth: bool = Field(
        default=False,
        description="Require an API key on GET /metrics too (/health and /ready stay open).",
    )
    max_outstanding_sequences: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Server-wide bound on the engine sequences admitted requests may hold at "
        "once (a plain request holds n per prompt, a strategy request its whole sample "
        "budget); over it a new request gets 429. Default: vLLM's max_num_seqs × queue_factor.",
    )
    queue_factor: float = Field(
        default=2.0,
        gt=0,
        le=100,
        description="The default admission bound in engine batches: max_num_seqs × this.",
    )
    max_strategy_tokens: int = Field(
        default=1_048_576,
        ge=1,
        le=1_000_000_000,
        description="Most tokens one strategy request may generate: its sample budget × the "
        "request's max_tokens (without max_tokens, the context left after the prompt).",
    )
    request_timeout: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Seconds a generation request may run; past it every engine request it "
        "started is aborted and the client gets a 504 (a streamed one an SSE error event).",
    )
    max_body_bytes: int = Field(
        default=33_554_432,
        ge=1024,
        le=2**31,
        description="Largest request body accepted, in bytes; above it a 413.",
    )
    max_messages: int = Field(
        default=2048,
        ge=1,
        le=1_000_000,
        description="Most messages one chat request may carry; above it a 400.",
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        validation_alias=AliasChoices("REFINERY_CACHE", "REFINERY_CACHE_DIR"),
        description="Where the converted built-in models are kept.",
    )
    backend: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="Gateway mode: the OpenAI base URL of a backend (vLLM or Refinery), e.g. "
        "http://vllm:8000/v1. Refinery then loads no model and serves through it.",
    )
    backend_api_key: SecretStr | None = Field(
        default=None, description="Bearer token Refinery sends to the backend (gateway mode)."
    )
    backend_session_header: str = Field(
        default="x-session-id",
        pattern=r"^[A-Za-z0-9-]+$",
        description="Header carrying one value per strategy request on all its backend "
        "requests, for routers that pin a session to a replica (gateway mode).",
    )
    backend_timeout: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Seconds the backend may stay silent while an answer is awaited; then 504.",
    )
    backend_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a backend request that could not connect (never of an answer).",
    )
    backend_priority: bool = Field(
        default=True,
        description="Send strategy sub-requests' priorities to the backend (vLLM's `priority`; "
        "the backend needs --scheduling-policy priority).",
    )
    backend_kind: Literal["auto", "refinery", "openai"] = Field(
        default="auto",
        description="What the backend is (gateway mode): a Refinery server runs strategy "
        "requests itself (forwarded whole: exact certainty, fan-out in its engine); any other "
        "OpenAI-compatible server (openai) is sampled by the gateway. auto asks the backend "
        "(GET <backend>/strategies) at start-up and with every health check.",
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

    @model_validator(mode="after")
    def _keys_readable_and_metrics_auth_has_keys(self) -> Settings:
        from server.api_keys import read_keys_file

        if self.api_keys_file is not None:
            read_keys_file(self.api_keys_file)  # a clear start-up error naming the path
        if self.metrics_auth and not self.api_keys and self.api_keys_file is None:
            raise ValueError("metrics_auth needs API keys (REFINERY_API_KEYS, --api-key or "
                             "REFINERY_API_KEYS_FILE)")
        return self
