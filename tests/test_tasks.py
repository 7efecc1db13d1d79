import pytest

from mtlora_vision.tasks import NUM_OUTPUTS, Task, check_tasks


def test_check_tasks_keeps_order_and_accepts_enum():
    assert check_tasks([Task.SAL, "semseg"], NUM_OUTPUTS["pascal_context"]) == ("sal", "semseg")


def test_check_tasks_names_the_unknown_task_and_the_available_ones():
    with pytest.raises(ValueError, match=r"\['depth'\].*semseg"):
        check_tasks(["semseg", "depth"], NUM_OUTPUTS["pascal_context"], what="PASCAL-Context")


@pytest.mark.parametrize("tasks", [[], ["sal", "sal"]])
def test_check_tasks_refuses_empty_and_duplicates(tasks):
    with pytest.raises(ValueError, match="task"):
        check_tasks(tasks, NUM_OUTPUTS["pascal_context"])


def test_derived_tables_hold_the_official_facts():
    from mtlora_vision.tasks import (
        DEFAULT_DELTA_M_KEYS,
        LOWER_IS_BETTER_KEYS,
        OFFICIAL_LOSS_WEIGHTS,
        TASKS,
        Kind,
        task_kind,
    )

    pascal = {"semseg": 21, "human_parts": 7, "sal": 1, "normals": 3, "edge": 1}
    assert NUM_OUTPUTS["pascal_context"] == pascal
    nyud = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1}
    assert NUM_OUTPUTS["nyud"] == nyud
    assert OFFICIAL_LOSS_WEIGHTS == {
        "semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "normals": 10.0, "edge": 50.0, "depth": 1.0
    }  # fmt: skip
    lower = {"normals/mean", "normals/median", "normals/rmse", "edge/bce", "depth/rmse"}
    lower.add("depth/log_rmse")
    assert lower == LOWER_IS_BETTER_KEYS
    for task, info in TASKS.items():
        assert DEFAULT_DELTA_M_KEYS[task] in info.metrics
    assert [t for t in TASKS if task_kind(t) is Kind.CLASSES] == ["semseg", "human_parts"]
    assert [t for t in TASKS if task_kind(t) is Kind.PROBABILITY] == ["sal", "edge"]
    with pytest.raises(ValueError, match="Unknown task 'ade'"):
        task_kind("ade")
