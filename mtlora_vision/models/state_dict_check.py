"""Strict state-dict fitting: one check, one error format, for every checkpoint we load."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

#: How many keys an error lists before it says how many there are in total.
MAX_LISTED_KEYS = 20


def compare_state_dicts(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Compare two state dicts by keys and shapes (pure).

    Returns:
        Sorted missing keys (in ``expected`` only), unexpected keys (in ``given`` only), and
        ``"key: given shape vs expected shape"`` for shared keys whose shapes differ.
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k}: {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(given))
        if tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    return missing, unexpected, mismatched


def listed(keys: list[str], limit: int = MAX_LISTED_KEYS) -> str:
    """``keys`` for an error message: the first ``limit``, then how many there are."""
    more = f" ... ({len(keys)} in total)" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def head_tasks(state: Mapping[str, Tensor]) -> list[str]:
    """Tasks that have a head in a ``MultiTaskModel`` state dict (``heads.<task>.*``)."""
    return sorted({k.split(".")[1] for k in state if k.startswith("heads.")})


def check_state_dict_fits(
    expected: Mapping[str, Tensor], given: Mapping[str, Tensor], source: str = "Checkpoint"
) -> None:
    """Raise a clear error unless ``given`` has exactly the keys and shapes of ``expected``.

    Args:
        expected: The model's state dict.
        given: The state dict to load.
        source: How the error names ``given``, e.g. ``"Checkpoint 'x.pth'"``.

    Raises:
        KeyError: Missing or unexpected keys, listed, with the head tasks of both when they
            differ (a checkpoint for other tasks).
        ValueError: Keys whose shapes differ (a checkpoint for other ranks or outputs).
    """
    missing, unexpected, mismatched = compare_state_dicts(expected, given)
    if missing or unexpected:
        tasks_note = ""
        own_tasks, their_tasks = head_tasks(expected), head_tasks(given)
        if own_tasks != their_tasks:
            tasks_note = f" It has heads for tasks {their_tasks}; the model for {own_tasks}."
        raise KeyError(
            f"{source} does not fit the model: missing keys {listed(missing)}, unexpected keys "
            f"{listed(unexpected)}.{tasks_note} Was it trained with other tasks, adapters or "
            "heads than this config?"
        )
    if mismatched:
        raise ValueError(
            f"{source} shapes differ from the model's (checkpoint vs model; other ranks or "
            f"numbers of classes?): {listed(mismatched)}."
        )
