"""The OpenAPI document the Ingress serves: exactly what the service accepts, and every answer a route gives.

FastAPI builds it from the request models (schemas.py, where each rule's schema lives beside its
validation). Three things are settled here, where the running service's own settings are known:
- FastAPI's document model holds numeric bounds as floats, which would turn a seed's 2^63 bound into
  9.223372036854776e18: bounds that are whole numbers are written as integers again, exactly;
- /generate's forms follow the configured task templates (schemas.generate_forms);
- with an API key configured, the routes that need it say so (bearer auth).
Every response carries X-Request-ID, and every error body its `request_id` (request_id.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serve_app.ingress import schemas
from serve_app.ingress.auth import OPEN_PATHS
from serve_app.text.prompts import PromptTemplates

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}
}


def error_responses(*, body: bool) -> dict[int | str, dict[str, Any]]:
    """Every error a route may answer, with the body's schema (FastAPI's `responses`)."""
    errors: dict[int | str, dict[str, Any]] = {
        401: {
            "model": schemas.ErrorResponse,
            "description": "An API key is configured and the request does not carry it (SECURITY.md)",
        },
        429: {
            "model": schemas.RateLimitedResponse,
            "description": 'The API key is over one of its limits (README, "API keys"); retry after Retry-After s',
            "headers": _RETRY_AFTER,
        },
        503: {
            "model": schemas.ErrorResponse,
            "description": "Overloaded, or no model replica runs; retry after Retry-After seconds",
            "headers": _RETRY_AFTER,
        },
        504: {"model": schemas.ErrorResponse, "description": "No answer within the service's request_timeout_s"},
    }
    if body:
        errors.update(
            {
                400: {
                    "model": schemas.ErrorResponse,
                    "description": "The body cannot be read as a JSON document (not UTF-8, say)",
                },
                408: {
                    "model": schemas.ErrorResponse,
                    "description": "The body did not all arrive within body_timeout_s of the request; the connection "
                    "is closed",
                },
                413: {"model": schemas.ErrorResponse, "description": "Body over 1 MiB"},
                422: {
                    "model": schemas.ErrorResponse,
                    "description": "A field breaks a rule; `detail` names the field (a dotted path) and the rule",
                },
            }
        )
    return errors


def health_responses() -> dict[int | str, dict[str, Any]]:
    return {
        503: {
            "model": schemas.HealthUnavailableResponse,
            "description": "No model replica is running",
            "headers": _RETRY_AFTER,
        }
    }


def document(api: FastAPI, templates: PromptTemplates, auth: bool) -> dict[str, Any]:
    """/openapi.json for this Ingress replica (cached on the app, as FastAPI does)."""
    if api.openapi_schema is None:
        doc = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        doc = _whole_bounds(doc)
        doc["components"]["schemas"]["GenerateRequest"]["oneOf"] = schemas.generate_forms(templates)
        if auth:
            doc["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The API key"}
            }
            for path, operations in doc["paths"].items():
                if path not in OPEN_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
        api.openapi_schema = doc
    return api.openapi_schema


def _whole_bounds(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: int(value)
            if key in _BOUNDS and isinstance(value, float) and value.is_integer()
            else _whole_bounds(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_whole_bounds(item) for item in node]
    return node
