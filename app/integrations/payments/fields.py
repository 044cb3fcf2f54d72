"""Small typed readers of verified provider JSON (a wrong type reads as missing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def dict_at(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def list_at(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj.get(key)
    return value if isinstance(value, list) else []


def str_at(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def int_at(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def upper(value: str | None) -> str | None:
    return value.upper() if value else None


def find_header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup that also works on a plain dict with other capitalization."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value
