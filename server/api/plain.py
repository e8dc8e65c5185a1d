"""Parsing and running plain (no strategy) generation requests through vLLM's serving layer."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from server.api.errors import invalid_from_validation
from server.errors import InvalidRequest

__all__ = ["KNOWN_CHAT_ROLES", "check_chat_roles", "parse_body"]

ModelT = TypeVar("ModelT", bound=BaseModel)

# OpenAI's roles. vLLM 0.32 itself accepts any role string (e.g. "wizard") and renders it into
# the chat template; Refinery refuses unknown roles instead of silently prompting with them.
KNOWN_CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_body(model: type[ModelT], body: dict[str, Any]) -> ModelT:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from exc


def check_chat_roles(messages: list[Any]) -> None:
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        if role not in KNOWN_CHAT_ROLES:
            raise InvalidRequest(
                f"messages[{index}].role {role!r} is not one of {sorted(KNOWN_CHAT_ROLES)}",
                param=f"messages.{index}.role",
                code="invalid_value",
            )

