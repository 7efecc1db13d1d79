"""Per-run log folder names and their order (a second run in the same second gets ``_2``)."""

from __future__ import annotations

from mtlora_vision.engine.log_dirs import log_dir_name, log_dir_order


def test_names_sort_by_start_time_then_number_not_as_strings():
    second = "20260101_000000"
    names = [log_dir_name(second, n) for n in (10, 9, 1, 2)] + ["20260101_000001"]
    assert names[2] == second
    assert sorted(names, key=log_dir_order) == [
        second, f"{second}_2", f"{second}_9", f"{second}_10", "20260101_000001"
    ]  # fmt: skip
    assert sorted(names)[:3] == [second, f"{second}_10", f"{second}_2"]  # the string order


def test_other_names_sort_as_themselves():
    assert log_dir_order("vis_data") == ("vis_data", 1)
    assert log_dir_order("run_3") == ("run_3", 1)  # a count only after a timestamp
    assert log_dir_order("20260101_000000") == ("20260101_000000", 1)
