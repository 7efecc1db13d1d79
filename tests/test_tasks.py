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
