"""Error types shared by the package (no heavy imports)."""

from __future__ import annotations


class FederatedConfigError(ValueError):
    """A setting is invalid. The message is one line and names the setting as the config does."""


def is_int(value: object) -> bool:
    """An integer setting, not a bool (``True`` is an ``int`` to Python, never a count or a seed here)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check(condition: bool, message: str) -> None:
    """Raise :class:`FederatedConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise FederatedConfigError(message)
