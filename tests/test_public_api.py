"""The declared public surface: sorted, complete, importable (httpx/anyio style)."""

from __future__ import annotations

import drivers
import statemachine
import statemachine.testing


def test_all_is_sorted_and_unique() -> None:
    """``__all__`` is one sorted list without duplicates, in both packages."""
    for module in (statemachine, drivers, statemachine.testing):
        names = list(module.__all__)
        assert names == sorted(names, key=lambda n: (not n.isupper(), n))
        assert len(set(names)) == len(names)


def test_every_exported_name_exists() -> None:
    """Everything in ``__all__`` is importable from the package."""
    for module in (statemachine, drivers, statemachine.testing):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_classes_show_the_package_in_reprs() -> None:
    """Public classes report ``statemachine`` as their module, as httpx does."""
    assert statemachine.Engine.__module__ == "statemachine"
    assert repr(statemachine.Engine).startswith("<class 'statemachine.Engine'")
