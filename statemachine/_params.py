"""Validating an action's parameters at the boundary: API words in, engine values out.

Shared by the engine (every request) and the scenario loader (a file is checked whole before
it runs). Every failure is an :class:`InvalidRequest`; nothing is persisted on refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._schema import Action, Lifecycle
from .errors import InvalidRequest
from .model import Flavor, validate_name

__all__ = [
    "MAX_METADATA_ITEMS",
    "MAX_METADATA_LEN",
    "MAX_USER_DATA",
    "normalize_params",
    "resolve_action",
]

MAX_METADATA_ITEMS = 128
MAX_METADATA_LEN = 255
MAX_USER_DATA = 65_535


def resolve_action(
    lifecycle: Lifecycle, name: str, params: Mapping[str, Any], *, system: bool = False
) -> Action:
    """The table entry for an API name and its ``type`` variant; checks the parameter names.

    Internal actions (the power sync's ``force_stop``) resolve only for the system.
    """
    variant = params.get("type")
    if variant is not None and not isinstance(variant, str):
        raise InvalidRequest("type must be a string", action=name)
    found = lifecycle.resolve(name, variant)
    if found is None or (found.internal and not system):
        if variant is not None and lifecycle.resolve(name, None) is not None:
            raise InvalidRequest(f"unknown {name} type {variant!r}", action=name)
        raise InvalidRequest(f"unknown action {name!r}", action=name)
    unknown = sorted(set(params) - found.params)
    if unknown:
        raise InvalidRequest(f"'{name}' takes no parameter {unknown}", action=name)
    missing = sorted(found.required - set(params))
    if missing:
        raise InvalidRequest(f"'{name}' needs parameters {missing}", action=name)
    return found


def normalize_params(action: Action, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert API words to engine values; typed errors, nothing persisted."""
    out = dict(params)
    if "flavor" in out and not isinstance(out["flavor"], Flavor):
        out["flavor"] = Flavor.from_mapping(out["flavor"])
    for key in ("image", "host", "name", "rescue_image", "key_name", "reason"):
        if key in out and (not isinstance(out[key], str) or not out[key]):
            raise InvalidRequest(f"{key} must be a non-empty string", action=action.name)
    for key in ("image", "host", "rescue_image", "key_name", "reason"):
        if key in out and len(out[key]) > 255:
            raise InvalidRequest(f"{key} is longer than 255 characters", action=action.name)
    if action.creates:
        validate_name(out.get("name"))
    md = out.get("metadata")
    if md is not None:
        if not isinstance(md, Mapping) or len(md) > MAX_METADATA_ITEMS:
            raise InvalidRequest(
                f"metadata must be an object of at most {MAX_METADATA_ITEMS} items"
            )
        for k, v in md.items():
            if not (isinstance(k, str) and isinstance(v, str)) or not k:
                raise InvalidRequest("metadata keys and values must be strings")
            if len(k) > MAX_METADATA_LEN or len(v) > MAX_METADATA_LEN:
                raise InvalidRequest(f"metadata items are limited to {MAX_METADATA_LEN} chars")
        out["metadata"] = dict(md)
    for key, limit in (("user_data", MAX_USER_DATA), ("admin_pass", 255)):
        if key in out and (not isinstance(out[key], str) or len(out[key]) > limit):
            raise InvalidRequest(f"{key} must be a string of at most {limit} characters")
    for key in set(out) - _BUILT_IN:  # an added action's own words: plain, bounded strings
        value = out[key]
        if not isinstance(value, str) or not value or len(value) > 255:
            raise InvalidRequest(
                f"{key} must be a non-empty string of at most 255 characters",
                action=action.name,
            )
    return out


_BUILT_IN = frozenset(
    {"flavor", "image", "host", "name", "rescue_image", "key_name", "reason", "metadata",
     "user_data", "admin_pass", "type"}
)  # fmt: skip
