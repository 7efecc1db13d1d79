"""mtlora_vision.comparison and tools/compare.py on fake work dirs: metrics pick-up, seeds,
Delta-m, table, CSV, Pareto plot."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mtlora_vision.comparison.pareto import dodge_same_x, label_layout, pareto_front, plot_pareto
from mtlora_vision.comparison.rows import Row, compare_runs
from mtlora_vision.comparison.runs import find_run, is_validation_record
from mtlora_vision.comparison.table import format_markdown
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.multitask import MultiTaskModel

ROOT = Path(__file__).resolve().parents[1]
ARCH = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
FROZEN = dict(patch_embed=False, norms=False, rel_pos=False, downsample=False, backbone=False)


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("tool_compare", ROOT / "tools" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def model_kwargs(tasks: tuple[str, ...], trainable: dict) -> dict:
    return dict(
        tasks=tasks,
        backbone=dict(type=SwinBackbone, arch=ARCH, img_size=64, window_size=4, pretrained=None),
        adapter=None,
        trainable=trainable,
        fusion=dict(channels=(4, 4, 4, 4)),
    )


def dumped_config(name: str, tasks: tuple[str, ...], trainable: dict, extra: str = "") -> str:
    """A config as mmengine dumps it: dotted type strings."""
    kwargs = model_kwargs(tasks, trainable)
    backbone = dict(kwargs["backbone"], type="mtlora_vision.models.backbones.swin.SwinBackbone")
    model = dict(kwargs, type="mtlora_vision.models.multitask.MultiTaskModel", backbone=backbone)
    return f"method_name = {name!r}\nmodel = {model!r}\n{extra}"


def seeded(seed: int, work_dir: str, epochs: int = 2) -> str:
    """Config lines of a seeded run: what differs between seeds, and the schedule's length."""
    return (
        f"randomness = dict(seed={seed}, diff_rank_seed=True)\nwork_dir = {work_dir!r}\n"
        f"train_cfg = dict(max_epochs={epochs}, val_interval=1)\n"
    )


def make_run(
    root: Path, name: str, tasks, trainable, validations, stamp="20250101_000000", extra=""
) -> Path:
    vis = root / name / stamp / "vis_data"
    vis.mkdir(parents=True)
    (vis / "config.py").write_text(dumped_config(name, tuple(tasks), trainable, extra))
    lines = [{"lr": 1e-3, "loss": 2.0, "loss_semseg": 1.0, "epoch": 1, "step": 1}]
    for step, metrics in enumerate(validations, start=1):
        lines += [{**metrics, "data_time": 0.1, "time": 0.2, "step": step}]
        lines += [{"base_lr": 1e-3, "lr": 1e-3, "loss": 1.0, "step": step + 1}]
    (vis / "scalars.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return root / name


def trainable_count(tasks, trainable) -> int:
    model = MultiTaskModel(**model_kwargs(tuple(tasks), trainable))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    two = ("semseg", "normals")
    early = {"semseg/mIoU": 1.0, "normals/mean": 90.0}
    return [
        make_run(
            tmp_path, "good", two, FROZEN, [early, {"semseg/mIoU": 60.0, "normals/mean": 18.0}]
        ),
        make_run(tmp_path, "bad", two, {}, [{"semseg/mIoU": 45.0, "normals/mean": 20.0}]),
        make_run(tmp_path, "st_seg", ("semseg",), {"backbone": True}, [{"semseg/mIoU": 50.0}]),
        make_run(tmp_path, "st_nrm", ("normals",), {"backbone": True}, [{"normals/mean": 20.0}]),
    ]


def test_delta_m_from_single_task_runs(compare, runs, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = {r.name: r for r in compare.main([*map(str, runs), "--out", str(out)])}
    assert set(rows) == {"good", "bad", "single-task"}
    # (60 - 50) / 50 = +20 %, normals lower is better: -(18 - 20) / 20 = +10 %, mean 15 %.
    assert rows["good"].delta_m == pytest.approx(15.0)
    assert rows["good"].metrics == {"semseg/mIoU": 60.0, "normals/mean": 18.0}  # last validation
    assert rows["bad"].delta_m == pytest.approx((-10.0 + 0.0) / 2)
    assert rows["single-task"].delta_m == 0.0
    assert rows["good"].trainable == trainable_count(("semseg", "normals"), FROZEN)
    single = trainable_count(("semseg",), {"backbone": True}) + trainable_count(
        ("normals",), {"backbone": True}
    )
    assert rows["single-task"].trainable == single
    assert rows["bad"].trainable == trainable_count(("semseg", "normals"), {})
    assert rows["bad"].total > rows["bad"].trainable  # default policy freezes Swin weights

    table = (out / "comparison.md").read_text().splitlines()
    header = "| method | config | seeds | trainable (M) | semseg/mIoU ↑ | normals/mean ↓ | Δm (%) |"
    assert table[0] == header
    good_m = f"{rows['good'].trainable / 1e6:.2f}"
    # no top-level dumped config in these fake runs: the config is the run's vis_data/config.py
    assert f"| good | `config.py` | 1 | {good_m} | 60.00 | 18.00 | 15.00 |" in table
    single_m = f"{single / 1e6:.2f}"
    assert f"| single-task | 2 configs, one per task | 1 | {single_m} |" in "\n".join(table)
    assert "| bad |" in "\n".join(table)
    with (out / "comparison.csv").open() as handle:
        records = {r["method"]: r for r in csv.DictReader(handle)}
    assert float(records["bad"]["delta_m"]) == pytest.approx(-5.0)
    assert records["good"]["delta_m_keys"] == "normals/mean semseg/mIoU"
    assert int(records["single-task"]["trainable"]) == single
    assert records["good"]["configs"].endswith("good/20250101_000000/vis_data/config.py")
    assert len(records["single-task"]["configs"].split()) == 2
    assert records["single-task"]["semseg/mIoU"] == "50.0"
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_file_and_test_metrics_take_precedence(runs, tmp_path: Path) -> None:
    (runs[1] / "metrics.json").write_text(json.dumps({"semseg/mIoU": 55.0, "normals/mean": 22.0}))
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"semseg/mIoU": 40.0, "normals/mean": 20.0}))
    rows = compare_runs(runs[:2], json.loads(baselines.read_text()))
    by_name = {r.name: r for r in rows}
    assert by_name["bad"].metrics_source.endswith("metrics.json")
    assert by_name["bad"].delta_m == pytest.approx((37.5 - 10.0) / 2)
    assert by_name["good"].delta_m == pytest.approx((50.0 + 10.0) / 2)
    assert by_name["good"].delta_m_source == "--baselines"


def test_logged_delta_m_is_the_fallback(tmp_path: Path) -> None:
    run = make_run(
        tmp_path, "x", ("semseg", "sal"), {}, [{"semseg/mIoU": 3.0, "multitask/delta_m": 1.5}]
    )
    (row,) = compare_runs([run])
    assert row.delta_m == 1.5
    assert row.delta_m_source == "logged"
    assert "sal/mIoU" not in row.metrics
    assert "| x |" in format_markdown([row])
    assert format_markdown([row]).splitlines()[2].endswith("| 3.00 | – | 1.50 (logged) |")


def test_title_heads_the_table(compare, runs, tmp_path: Path) -> None:
    out = tmp_path / "titled"
    compare.main([*map(str, runs), "--out", str(out), "--title", "Synthetic data"])
    lines = (out / "comparison.md").read_text().splitlines()
    assert lines[0] == "Synthetic data"
    assert lines[2].startswith("| method | config |")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clear_errors(compare, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_run(tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / "20250101_000000" / "vis_data").mkdir(parents=True)
    (empty / "20250101_000000" / "vis_data" / "scalars.json").write_text(
        json.dumps({"lr": 0.1, "loss": 1.0, "step": 1}) + "\n"
    )
    with pytest.raises(FileNotFoundError, match=r"No metrics in work dir .*empty.*tools/test\.py"):
        compare.main([str(empty), "--out", str(tmp_path / "o"), "--strict"])
    with pytest.raises(FileNotFoundError, match=r"None of the 1 work dir\(s\) holds a finished"):
        compare.main([str(empty), "--out", str(tmp_path / "o")])


def test_pure_helpers() -> None:
    assert is_validation_record({"semseg/mIoU": 1.0, "step": 3})
    assert not is_validation_record({"loss": 1.0, "lr": 0.1, "step": 3})
    # (1, 5) and (10, 8) trade off; (20, 7) is beaten by (10, 8); (1, 2) by (1, 5).
    points = [(20.0, 7.0), (1.0, 5.0), (10.0, 8.0), (1.0, 2.0)]
    assert pareto_front(points) == [1, 2]


def test_seeds_are_grouped_with_mean_and_std(compare, tmp_path: Path) -> None:
    two = ("semseg", "normals")
    runs = []
    for seed, miou in ((0, 60.0), (1, 62.0), (2, 64.0)):
        root = tmp_path / f"seed{seed}"
        extra = seeded(seed, str(root / "good"))
        val = {"semseg/mIoU": miou, "normals/mean": 18.0}
        runs.append(make_run(root, "good", two, FROZEN, [val, val], extra=extra))
    for seed, miou in ((0, 48.0), (1, 52.0)):
        root = tmp_path / f"st{seed}"
        extra = seeded(seed, str(root / "st_seg"), epochs=1)
        val = {"semseg/mIoU": miou}
        runs.append(make_run(root, "st_seg", ("semseg",), {"backbone": True}, [val], extra=extra))
        extra = seeded(seed, str(root / "st_nrm"), epochs=1)
        val = {"normals/mean": 20.0}
        runs.append(make_run(root, "st_nrm", ("normals",), {"backbone": True}, [val], extra=extra))
    out = tmp_path / "out"
    rows = {r.name: r for r in compare.main([*map(str, runs), "--out", str(out)])}
    assert set(rows) == {"good", "single-task"}
    good, single = rows["good"], rows["single-task"]
    assert good.seeds == [0, 1, 2]
    assert good.metrics["semseg/mIoU"] == pytest.approx(62.0)
    assert good.metrics_std["semseg/mIoU"] == pytest.approx(2.0)  # sample std of 60, 62, 64
    assert good.metrics_std["normals/mean"] == 0.0
    # Baselines: semseg mean(48, 52) = 50, normals 20. Per seed Delta-m: (20 + 10) / 2 = 15,
    # (24 + 10) / 2 = 17, (28 + 10) / 2 = 19 -> 17 ± 2.
    assert [run.delta_m for run in good.runs] == pytest.approx([15.0, 17.0, 19.0])
    assert good.delta_m == pytest.approx(17.0)
    assert good.delta_m_std == pytest.approx(2.0)
    # Single-task row per seed: seed 0 (-4 + 0) / 2 = -2, seed 1 +2 -> mean 0, std 2 sqrt(2).
    assert single.delta_m == pytest.approx(0.0, abs=1e-12)
    assert single.delta_m_std == pytest.approx(2.0 * 2.0**0.5)
    assert single.trainable == trainable_count(("semseg",), {"backbone": True}) + trainable_count(
        ("normals",), {"backbone": True}
    ), "one model per task, not per seed"
    table = (out / "comparison.md").read_text()
    assert "| good | `config.py` | 3 |" in table
    assert "| 62.00 ± 2.00 | 18.00 ± 0.00 | 17.00 ± 2.00 |" in table
    assert "| single-task | 2 configs, one per task | 2 |" in table
    assert table.rstrip().endswith("| 0.00 ± 2.83 |")
    with (out / "comparison.csv").open() as handle:
        records = {r["method"]: r for r in csv.DictReader(handle)}
    assert records["good"]["num_runs"] == "3"
    assert records["good"]["seeds"] == "0 1 2"
    assert float(records["good"]["semseg/mIoU std"]) == pytest.approx(2.0)
    assert float(records["good"]["delta_m_std"]) == pytest.approx(2.0)
    assert len(records["single-task"]["work_dirs"].split()) == 4


def test_other_configs_stay_separate_rows(tmp_path: Path, caplog) -> None:
    val = {"semseg/mIoU": 60.0, "normals/mean": 18.0}
    two = ("semseg", "normals")
    a = make_run(tmp_path / "a", "m", two, FROZEN, [val, val], extra=seeded(0, "a"))
    b = make_run(tmp_path / "b", "m", two, FROZEN, [val], extra=seeded(0, "b", epochs=1))
    c = make_run(tmp_path / "c", "m", two, FROZEN, [val], extra=seeded(0, "c", epochs=1))
    with caplog.at_level("WARNING", logger="mtlora_vision.comparison"):
        rows = compare_runs([a, b, c])
    assert [len(row.runs) for row in rows] == [1, 2]  # a has another schedule; b, c repeat seed 0
    assert "share a seed ([0, 0])" in caplog.text
    assert "Several configs are named 'm'" in caplog.text


def test_failed_and_stopped_runs_are_skipped_unless_strict(runs, tmp_path: Path, caplog):
    failed = tmp_path / "failed"
    (failed / "20250101_000000" / "vis_data").mkdir(parents=True)
    (failed / "20250101_000000" / "vis_data" / "scalars.json").write_text(
        json.dumps({"lr": 0.1, "loss": 1.0, "step": 1}) + "\n"
    )
    val = {"semseg/mIoU": 60.0, "normals/mean": 18.0}
    # Validated at step 1 of a 2-epoch schedule, then killed.
    stopped = make_run(
        tmp_path, "stopped", ("semseg", "normals"), FROZEN, [val], extra=seeded(0, "x")
    )
    with caplog.at_level("WARNING", logger="mtlora_vision.comparison"):
        rows = compare_runs([*runs, failed, stopped])
    assert {r.name for r in rows} == {"good", "bad", "single-task"}
    assert "Skipped: No metrics in work dir" in caplog.text
    assert "stopped early: its last validation is at step 1 of 2" in caplog.text
    for extra in (failed, stopped):
        with pytest.raises(FileNotFoundError):
            compare_runs([*runs, extra], strict=True)


def test_partial_delta_m_is_marked_in_the_table(runs, tmp_path: Path) -> None:
    rows = compare_runs(runs[:2], {"semseg/mIoU": 50.0})
    good = next(r for r in rows if r.name == "good")
    assert good.delta_m == pytest.approx(20.0)  # semseg only
    assert good.delta_m_keys == ["semseg/mIoU"]
    line = next(x for x in format_markdown(rows).splitlines() if x.startswith("| good"))
    assert line.endswith("| 20.00 (1/2 tasks) |")


def test_a_single_run_still_plots_its_point(compare, runs, tmp_path: Path) -> None:
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"semseg/mIoU": 50.0, "normals/mean": 20.0}))
    out = tmp_path / "one"
    (row,) = compare.main([str(runs[0]), "--out", str(out), "--baselines", str(baselines)])
    assert row.delta_m == pytest.approx(15.0)
    assert plot_pareto([row], out / "again.png") == 1
    assert plot_pareto([row, Row("no-dm", [], ("semseg",), 1, 1)], out / "b.png") == 1


def test_no_final_validation_expected_when_val_begin_is_late(tmp_path: Path) -> None:
    val = {"semseg/mIoU": 60.0, "normals/mean": 18.0}
    extra = seeded(0, "x") + "train_cfg.update(val_begin=3)\n"
    run = make_run(tmp_path, "late", ("semseg", "normals"), FROZEN, [val], extra=extra)
    (row,) = compare_runs([run], strict=True)
    assert row.metrics == val


def test_points_sharing_a_parameter_count_are_dodged() -> None:
    same_x, dodge, rank = dodge_same_x([(5.0, 3.0), (9.0, 1.0), (5.0, 1.0), (5.0, 2.0)])
    assert same_x == {5.0: [2, 3, 0], 9.0: [1]}
    assert rank == [2, 0, 0, 1]
    assert dodge == pytest.approx([1.07, 1.0, 1 / 1.07, 1.0])


def test_labels_of_nearby_points_do_not_overlap() -> None:
    points = [(1e5, 10.0), (1.2e5, 10.5), (1.5e5, 11.0), (1e7, 0.0)]
    layout = label_layout(points, gap=2.0)
    # One column right of the cluster's largest x, 2 apart, centred on the mean y (10.5).
    assert [x for x, _ in layout[:3]] == pytest.approx([1.5e5 * 1.25] * 3)
    assert [y for _, y in layout[:3]] == pytest.approx([8.5, 10.5, 12.5])
    assert layout[3] == pytest.approx((1e7 * 1.12, 0.0))  # a lone point keeps its height


def test_the_console_shows_the_table_and_warnings_not_package_info(runs, tmp_path: Path) -> None:
    # Counting parameters builds each run's model; the package's INFO lines stay off the console.
    import subprocess

    tool = str(ROOT / "tools" / "compare.py")
    result = subprocess.run(
        [sys.executable, tool, *map(str, runs[:2]), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| method |" in result.stdout
    assert "INFO" not in result.stdout + result.stderr
    assert "WARNING: No run has a Delta-m" in result.stderr  # no single-task runs given


def test_find_run_reads_the_newest_run_of_a_second_also_past_nine(tmp_path: Path) -> None:
    # Runs started in the same second get <timestamp>_2, _3, ...: _10 is newer than _9.
    for count, miou in ((9, 40.0), (10, 50.0)):
        make_run(tmp_path, "seg", ("semseg",), {}, [{"semseg/mIoU": miou}],
                 stamp=f"20250101_000000_{count}")  # fmt: skip
    config, metrics, source = find_run(tmp_path / "seg")
    assert metrics["semseg/mIoU"] == 50.0
    assert "20250101_000000_10" in source
    assert config.parent.parent.name == "20250101_000000_10"
