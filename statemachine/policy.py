"""Who may do what: the default rules (owner or admin; admin-only actions) and the lock check.

The security issue makes the rules configurable data; the engine asks only :meth:`Policy.check`.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ._schema import Action, Rule
from .errors import Forbidden
from .model import Instance, RequestContext

__all__ = ["Policy"]


@attrs.frozen
class Policy:
    """Maps each action to a rule; ``overrides`` replaces the table's rule for named actions."""

    overrides: Mapping[str, Rule] = attrs.field(factory=dict)

    def rule(self, action: Action) -> Rule:
        """The rule that applies to ``action``."""
        return self.overrides.get(action.name, action.rule)

    def check(self, ctx: RequestContext, action: Action, instance: Instance | None) -> None:
        """Raise :class:`Forbidden` unless ``ctx`` may perform ``action`` on ``instance``."""
        rule = self.rule(action)
        target = instance.uuid if instance is not None else None
        if ctx.is_system:
            return
        if rule is Rule.SYSTEM:
            raise Forbidden(action.public_name, target, rule.value)
        if rule is Rule.ADMIN and not ctx.is_admin:
            raise Forbidden(action.public_name, target, rule.value)
        if (
            rule is Rule.OWNER_OR_ADMIN
            and instance is not None
            and not ctx.is_admin
            and ctx.project_id != instance.project_id
        ):
            raise Forbidden(action.public_name, target, rule.value)
        if (
            action.name == "unlock"
            and instance is not None
            and instance.locked_by == "admin"
            and not ctx.is_admin
        ):
            # Nova's unlock_override: a lock set by an admin needs an admin to lift
            raise Forbidden(action.public_name, target, "unlock_override")
