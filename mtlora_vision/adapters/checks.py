"""The integer check that every adapter setting goes through."""

from __future__ import annotations


def check_int(
    name: str, value: object, low: int = 1, high: int | None = None, shown: object = None
) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int`` (not a bool) in ``[low, high]``.

    Args:
        name: Setting name, for the message.
        value: The value to check.
        low: Smallest allowed value.
        high: Largest allowed value, or ``None`` for no bound.
        shown: What the message shows as ``name=...`` (default ``value``), e.g. a per-stage list.
    """
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not valid or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        shown = value if shown is None else shown
        raise ValueError(f"{name} must be an integer {bounds}, got {name}={shown!r}.")
