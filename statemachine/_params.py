"""Validating an action's parameters at the boundary: API words in, engine values out.

Shared by the engine (every request) and the scenario loader (a file is checked whole before
it runs). Every failure is an :class:`InvalidRequest`; nothing is persisted on refusal. The
checks themselves live in :mod:`statemachine._validate`; this module says which applies to
which parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import _validate
from ._schema import Action, Lifecycle
from ._validate import MAX_METADATA_ITEMS, MAX_METADATA_LEN, MAX_USER_DATA
from .errors import InvalidRequest
from .model import Flavor
from .redact import Secret

__all__ = [
    "MAX_ADMIN_PASS",
    "MAX_METADATA_ITEMS",
    "MAX_METADATA_LEN",
    "MAX_USER_DATA",
    "normalize_params",
    "resolve_action",
]

MAX_ADMIN_PASS = 255

_TEXT_PARAMS = ("image", "rescue_image", "reason")
"""Free text of at most 255 printable characters (image references, a lock's reason)."""


def resolve_action(
    lifecycle: Lifecycle, name: str, params: Mapping[str, Any], *, system: bool = False
) -> Action:
    """The table entry for an API name and its variant (picked by ``type``, or the entry's
    ``variant_param``); checks the parameter names.

    Internal actions (the power sync's ``force_stop``) resolve only for the system.

    Raises:
        InvalidRequest: an unknown action or variant, or parameters it does not take or lacks.
    """
    if not isinstance(name, str):
        raise InvalidRequest(f"an action name is a string, not {_validate.show(name)}")
    if not isinstance(params, Mapping):
        raise InvalidRequest(f"parameters are an object, not {_validate.show(params)}", action=name)
    shown = _validate.show(name)
    picker = lifecycle.variant_param(name)
    variant = params.get(picker)
    if variant is not None and not isinstance(variant, str):
        raise InvalidRequest(f"{picker} must be a string", action=name)
    found = lifecycle.resolve(name, variant)
    if found is None or (found.internal and not system):
        if variant is not None and lifecycle.resolve(name, None) is not None:
            raise InvalidRequest(f"unknown {name} {picker} {_validate.show(variant)}", action=name)
        raise InvalidRequest(f"unknown action {shown}", action=name)
    if not all(isinstance(key, str) for key in params):
        raise InvalidRequest(f"'{name}' parameter names are strings", action=name)
    unknown = sorted(set(params) - found.params)
    if unknown:
        listed = [_validate.show(key) for key in unknown[:5]]
        raise InvalidRequest(f"'{name}' takes no parameter [{', '.join(listed)}]", action=name)
    missing = sorted(found.required - set(params))
    if missing:
        raise InvalidRequest(f"'{name}' needs parameters {missing}", action=name)
    return found


def normalize_params(action: Action, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and convert API words to engine values; typed errors, nothing persisted.

    ``admin_pass`` is checked and dropped (no driver of ism injects passwords, so keeping it
    could only leak it); ``user_data`` is kept as a :class:`~statemachine.redact.Secret`, whose
    ``repr`` is masked, since it reaches the driver and nothing else.

    Raises:
        InvalidRequest: naming the parameter; secret values are never echoed.
    """
    name = action.name
    out = dict(params)
    if "flavor" in out and not isinstance(out["flavor"], Flavor):
        out["flavor"] = Flavor.from_mapping(out["flavor"])
    for key in _TEXT_PARAMS:
        if key in out:
            _validate.text(key, out[key], action=name)
    if "host" in out:
        _validate.host(out["host"], action=name)
    if "key_name" in out:
        _validate.key_name(out["key_name"], action=name)
    if "name" in out:
        if action.creates:
            _validate.name(out["name"], action=name)
        else:  # a snapshot's image name: free text
            _validate.text("name", out["name"], action=name)
    elif action.creates:
        _validate.name(None, action=name)
    if "metadata" in out:
        out["metadata"] = _validate.metadata(out["metadata"], action=name)
    if "user_data" in out:
        data = _validate.secret("user_data", out["user_data"], limit=MAX_USER_DATA, action=name)
        out["user_data"] = Secret(data)
    if "admin_pass" in out:
        _validate.secret("admin_pass", out.pop("admin_pass"), limit=MAX_ADMIN_PASS, action=name)
    for key in set(out) - _BUILT_IN:  # an added action's own words: plain, bounded text
        _validate.text(key, out[key], action=name)
    return out


_BUILT_IN = frozenset(
    {"flavor", "image", "host", "name", "rescue_image", "key_name", "reason", "metadata",
     "user_data", "admin_pass", "type"}
)  # fmt: skip
