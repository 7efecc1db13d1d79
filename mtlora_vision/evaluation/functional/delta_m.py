"""Multi-task performance Delta-m (Maninis et al., CVPR 2019), as reported by MTLoRA (CVPR 2024).

``Delta_m = (1 / T) * sum_t (-1)^{l_t} (M_t - M_t^ST) / M_t^ST * 100``, with ``l_t = 1`` when a
lower value of metric ``M_t`` is better (e.g. the normals mean angular error) and 0 otherwise.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def delta_m(
    results: Mapping[str, float],
    baselines: Mapping[str, float],
    lower_is_better: Collection[str],
) -> float:
    """Average relative improvement over single-task baselines, in percent.

    Args:
        results: Metric value of the multi-task model, keyed like ``baselines``.
        baselines: Single-task value per key; every key enters the average.
        lower_is_better: Keys whose metric improves when it decreases.

    Returns:
        Delta-m in percent (positive when the multi-task model is better on average).

    Raises:
        ValueError: If ``baselines`` is empty or holds a zero.
        KeyError: If ``results`` lacks a key of ``baselines``.
    """
    if not baselines:
        raise ValueError("delta_m needs at least one baseline.")
    missing = [key for key in baselines if key not in results]
    if missing:
        raise KeyError(f"No result for baseline key(s) {missing}; results have {list(results)}.")
    total = 0.0
    for key, base in baselines.items():
        if base == 0:
            raise ValueError(f"Baseline {key!r} is 0; Delta-m divides by it.")
        sign = -1.0 if key in lower_is_better else 1.0
        total += sign * (float(results[key]) - base) / base
    return total / len(baselines) * 100.0
