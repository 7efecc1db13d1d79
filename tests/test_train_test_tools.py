"""End-to-end runs of tools/train.py and tools/test.py on tiny synthetic data (CPU)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time

import cv2
import pytest
import torch
from engine_utils import DEMO, REPO, tiny_options, write_tiny_pretrained

from mtlora_vision.engine.log_dirs import log_dir_order
from mtlora_vision.safe_load import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    check_checkpoint_integrity,
)


def load_tool(name: str):
    """Import ``tools/<name>.py`` by path (``test`` would clash with the standard library)."""
    spec = importlib.util.spec_from_file_location(
        f"mtlora_tool_{name}", REPO / "tools" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_tool = load_tool("test")
train_tool = load_tool("train")

EXPECTED_KEYS = {
    "semseg/mIoU",
    "human_parts/mIoU",
    "sal/mIoU",
    "sal/maxF",
    "normals/mean",
    "normals/rmse",
    "edge/odsF",
}


def run_tool(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("MTLORA_ALLOCATOR", None)  # the tools' own allocator choice
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny 2-iteration training run shared by the tests below."""
    root = tmp_path_factory.mktemp("run")
    work_dir = root / "work"
    pretrained = write_tiny_pretrained(root / "swin_tiny_test.pth")
    options = tiny_options(root / "data", pretrained=pretrained)
    best = "default_hooks.checkpoint.save_best=semseg/mIoU"  # with the validation before training
    train_tool.main([DEMO, "--work-dir", str(work_dir), "--cfg-options", *options, best])
    return root, work_dir, options


def test_train_writes_a_trainable_only_checkpoint(trained):
    _, work_dir, _ = trained
    ckpt = torch.load(work_dir / "epoch_1.pth", map_location="cpu", weights_only=False)
    keys = set(ckpt["state_dict"])
    assert ckpt["meta"]["state_dict_content"] == "trainable"
    assert ckpt["meta"]["iter"] == 2
    assert any(".lora_shared_a" in k for k in keys)
    assert any(k.startswith("heads.") for k in keys)
    # Frozen pretrained weights stay out of the checkpoint.
    assert not any(k.endswith("base_layer.weight") for k in keys)
    assert (work_dir / "last_checkpoint").read_text() == "epoch_1.pth"  # relative to the work dir
    mask = os.umask(0o022)
    os.umask(mask)
    log = next(work_dir.glob("*/*.log"))
    for path in (work_dir / "epoch_1.pth", work_dir / "last_checkpoint", log):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path  # checkpoints were 0600


def test_save_best_works_with_the_validation_before_training(trained):
    root, work_dir, options = trained
    (best,) = work_dir.glob("best_semseg_mIoU_*.pth")
    assert best.name == "best_semseg_mIoU_epoch_1.pth"  # the untrained model is no candidate
    assert "size and SHA-256" in check_checkpoint_integrity(best)
    metrics = test_tool.main(
        [DEMO, str(best), "--work-dir", str(root / "tb"), "--cfg-options", *options]
    )
    hub = load_checkpoint_meta(work_dir / "epoch_1.pth", key="message_hub")["runtime_info"]
    assert hub["best_ckpt"] == str(best)
    assert metrics["semseg/mIoU"] == pytest.approx(hub["best_score"])  # val and test data agree


def _events(work_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (path,) = work_dir.glob("*/vis_data/events.out.tfevents.*")
    events = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_tensorboard_has_task_losses_lr_metrics_and_images(trained):
    _, work_dir, _ = trained
    events = _events(work_dir)
    scalars = set(events.Tags()["scalars"])
    tasks = ("semseg", "human_parts", "sal", "normals", "edge")
    assert {"loss", "lr", *(f"loss_{t}" for t in tasks), *(f"raw_{t}" for t in tasks)} <= scalars
    assert scalars >= EXPECTED_KEYS
    # Validated before training (ValidateBeforeTrainHook) and after epoch 1 (2 iterations):
    # validation scalars and pictures share the training scalars' step axis, iterations.
    assert [e.step for e in events.Scalars("loss_sal")] == [1, 2]
    assert [e.step for e in events.Scalars("semseg/mIoU")] == [0, 2]
    images = events.Tags()["images"]
    assert len(images) == 2
    assert all(tag.startswith("val/") for tag in images)
    assert {e.step for e in events.Images(images[0])} == {0, 2}
    # the local backend keeps the same pictures as files
    assert len(list(work_dir.glob("*/vis_data/vis_image/val/*.png"))) == 4


def test_test_tool_writes_metrics_json_predictions_and_pictures(trained, capsys):
    root, work_dir, options = trained
    out = root / "metrics.json"
    metrics = test_tool.main(
        [
            DEMO,
            str(work_dir / "epoch_1.pth"),
            "--work-dir",
            str(root / "test"),
            "--out",
            str(out),
            "--out-dir",
            str(root / "preds"),
            "--show-dir",
            str(root / "show"),
            "--cfg-options",
            *options,
        ]
    )
    written = json.loads(out.read_text())
    assert written == pytest.approx(metrics)
    assert set(written) >= EXPECTED_KEYS
    assert all(isinstance(v, float) for v in written.values())
    captured = capsys.readouterr()
    assert "test: 100%" in captured.err  # progress bar over the 1 test batch
    assert "human_parts  mIoU" in captured.out  # per-task table
    normals_mean = f"{metrics['normals/mean']:9.4f}  deg"  # with the unit
    assert f"normals      mean    {normals_mean}" in captured.out
    assert f"Metrics written to {out}" in captured.out
    assert "Epoch(test)" not in captured.out  # mmengine's one-line copy of the table
    # mmengine prints its "Loads checkpoint by ..." line; the runner puts it in the log instead.
    assert "Loads checkpoint by" not in captured.out
    # In this run's own log, even when it started in the same second as the fixture's training.
    test_log = next((root / "test").glob("*/*.log")).read_text()
    assert f"checkpoint by local_safe backend from path: {work_dir / 'epoch_1.pth'}" in test_log
    assert "Epoch(test)" in test_log
    # Offline-evaluation formats at the original image size (synthetic images are 48 x 64).
    for task in ("semseg", "human_parts", "sal", "normals", "edge"):
        files = sorted((root / "preds" / task).glob("*.png"))
        assert len(files) == 2
        array = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
        assert array.dtype == "uint8"
        assert array.shape == ((48, 64, 3) if task == "normals" else (48, 64))
        if task in ("semseg", "human_parts"):
            assert array.max() < {"semseg": 21, "human_parts": 7}[task]
    normals = cv2.imread(str(next((root / "preds" / "normals").glob("*.png"))))[..., ::-1]
    unit = normals.astype("float64") * 2 / 255 - 1
    assert abs((unit**2).sum(axis=-1) - 1).max() < 0.05  # RGB = 255 * (n + 1) / 2
    assert len(list((root / "show").glob("*.png"))) == 2


def test_test_tool_leaves_the_training_record_alone(trained):
    _, work_dir, options = trained
    dump = work_dir / "mtlora_swin_demo.py"
    before = dump.read_text()
    folders_before = {p for p in work_dir.iterdir() if p.is_dir()}
    ckpt = str(work_dir / "epoch_1.pth")
    test_tool.main([DEMO, ckpt, "--work-dir", str(work_dir), "--cfg-options", *options])
    assert dump.read_text() == before  # retraining from the dump still starts from scratch
    assert "epoch_1.pth" not in before
    (folder,) = {p for p in work_dir.iterdir() if p.is_dir()} - folders_before
    assert folder.name[:8].isdigit()  # <timestamp>/
    assert ckpt in (folder / "mtlora_swin_demo.py").read_text()  # its own dump, load_from set
    assert list(folder.glob("*.log"))
    assert not list(folder.rglob("events.out.tfevents.*"))  # no empty TensorBoard run


def test_eval_predictions_agrees_with_the_test_tool(trained, tmp_path):
    """Scores from the saved files equal tools/test.py's: exactly for class ids and edges (the
    SEISM protocol scores the same 8-bit levels), within the 8-bit rounding for sal and normals."""
    root, work_dir, options = trained
    eval_tool = load_tool("eval_predictions")
    preds, out = tmp_path / "preds", tmp_path / "test.json"
    original = ["test_dataloader.dataset.keep_original_size=True"]
    args = [DEMO, str(work_dir / "epoch_1.pth"), "--work-dir", str(tmp_path / "t")]
    expected = test_tool.main(
        [*args, "--out", str(out), "--out-dir", str(preds), "--cfg-options", *options, *original]
    )
    common = ["--dataset", "pascal_context", "--data-root", str(root / "data")]
    common += ["--cache-dir", str(root / "cache"), "--no-delta-m"]
    scored = eval_tool.main([str(preds), *common, "--out", str(tmp_path / "eval.json")])
    assert json.loads((tmp_path / "eval.json").read_text()) == pytest.approx(scored)
    assert set(scored) == set(expected)
    for key in ("semseg/mIoU", "human_parts/mIoU", "edge/odsF", "edge/oisF", "edge/AP"):
        assert scored[key] == expected[key], key
    for key in ("sal/mIoU", "sal/maxF"):  # p -> round(255 p) / 255 moves a pixel by <= 1/510
        assert scored[key] == pytest.approx(expected[key], abs=0.5), key
    assert scored["normals/mean"] == pytest.approx(expected["normals/mean"], abs=0.3)
    assert scored["edge/bce"] == pytest.approx(expected["edge/bce"], rel=1e-2)
    # a missing and a mis-sized file are named before / instead of a score
    first = sorted((preds / "edge").glob("*.png"))[0]
    first.unlink()
    with pytest.raises(FileNotFoundError, match=first.name):
        eval_tool.main([str(preds), *common, "--tasks", "edge"])
    cv2.imwrite(str(first), cv2.imread(str(preds / "sal" / first.name))[:40, :, 0])
    with pytest.raises(ValueError, match=rf"{first.name}: prediction is \(40, 64\)"):
        eval_tool.main([str(preds), *common, "--tasks", "edge"])


def test_loading_a_checkpoint_for_other_tasks_is_a_clear_error(trained):
    root, work_dir, options = trained
    options = [*options, "model.adapter.task_rank=2"]
    args = [DEMO, str(work_dir / "epoch_1.pth"), "--work-dir", str(root / "t2")]
    with pytest.raises(ValueError, match="shapes differ"):
        test_tool.main([*args, "--cfg-options", *options])


def test_train_kill_resume_and_finish(tmp_path, caplog):
    work_dir = tmp_path / "work"
    options = tiny_options(tmp_path / "data", epochs=3)
    cmd = ["tools/train.py", DEMO, "--work-dir", str(work_dir), "--cfg-options", *options]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, *cmd],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not (work_dir / "epoch_1.pth").exists() and time.time() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (work_dir / "epoch_1.pth").exists()
    assert not (work_dir / "epoch_3.pth").exists()
    resumed = run_tool([*cmd[:4], "--resume", "--cfg-options", *options])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The console's start-up summary names the source; mmengine's own line is in the log file.
    assert "weights:    resumed from " in resumed.stdout
    assert "Loads checkpoint by" not in resumed.stdout
    newest_log = sorted(work_dir.glob("*/*.log"))[-1]
    assert "resumed epoch: " in newest_log.read_text()
    final = torch.load(work_dir / "epoch_3.pth", map_location="cpu", weights_only=False)
    assert final["meta"]["epoch"] == 3
    assert final["meta"]["iter"] == 6
    _resume_copies_of_a_finished_run(tmp_path, work_dir, options, caplog)


def _digests(folder) -> dict:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in folder.rglob("*")
        if p.is_file()
    }


def _resume_copies_of_a_finished_run(tmp_path, work_dir, options, caplog):
    """Copies of a finished 3-epoch run: finished, extended, and with a damaged newest file."""
    original = _digests(work_dir)
    copy = tmp_path / "copy"
    shutil.copytree(work_dir, copy)
    (copy / "epoch_1.pth").touch()  # newest by file time, oldest by training progress
    before = _digests(copy)
    args = [DEMO, "--work-dir", str(copy), "--resume", "--cfg-options", *options]
    with caplog.at_level(logging.INFO):
        train_tool.main(args)
    assert f"Nothing to train: {copy / 'epoch_3.pth'} is at epoch 3" in caplog.text
    assert _digests(copy) == before  # no file written, rewritten or added
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_tool.main([*args, "train_cfg.max_epochs=4"])
    assert f"complete checkpoint {copy / 'epoch_3.pth'} (epoch 3" in caplog.text
    assert load_checkpoint_meta(copy / "epoch_4.pth")["iter"] == 8
    assert _digests(work_dir) == original  # the original run is untouched
    damaged = tmp_path / "damaged"
    shutil.copytree(work_dir, damaged)
    (damaged / "epoch_3.pth").write_bytes(os.urandom(5000))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train_tool.main([DEMO, "--work-dir", str(damaged), "--resume", "--cfg-options", *options])
    assert "epoch_3.pth, it is damaged: it is truncated" in caplog.text
    assert f"complete checkpoint {damaged / 'epoch_2.pth'} (epoch 2" in caplog.text
    assert load_checkpoint_meta(damaged / "epoch_3.pth")["iter"] == 6  # trained again, complete


def load_checkpoint_meta(path, key: str = "meta") -> dict:
    from mtlora_vision.safe_load import load_checkpoint_safely

    return load_checkpoint_safely(path)[key]


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_test_tool_and_resume_name_a_damaged_checkpoint(trained, tmp_path, damage):
    _root, work_dir, options = trained
    data = (work_dir / "epoch_1.pth").read_bytes()
    path = tmp_path / "epoch_1.pth"
    path.write_bytes({"truncated": data[:-10], "empty": b"", "random": os.urandom(999)}[damage])
    with pytest.raises(DamagedCheckpointError, match=r"epoch_1\.pth' is damaged") as info:
        test_tool.main(
            [DEMO, str(path), "--work-dir", str(tmp_path / "t"), "--cfg-options", *options]
        )
    assert not isinstance(info.value, pickle.UnpicklingError)
    with pytest.raises(DamagedCheckpointError, match=r"epoch_1\.pth' is damaged"):
        train_tool.main([DEMO, "--work-dir", str(tmp_path / "w"), "--resume", str(path)])


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_test_and_train_tools_never_run_code_from_a_checkpoint(trained, tmp_path):
    _root, work_dir, options = trained
    checkpoint = torch.load(work_dir / "epoch_1.pth", map_location="cpu", weights_only=False)
    checkpoint["meta"]["note"] = _Evil(str(tmp_path / "pwned"))
    torch.save(checkpoint, tmp_path / "epoch_1.pth")
    args = [DEMO, str(tmp_path / "epoch_1.pth"), "--work-dir", str(tmp_path / "t")]
    with pytest.raises(UnsafeCheckpointError, match=r"epoch_1\.pth.*system"):
        test_tool.main([*args, "--cfg-options", *options])
    with pytest.raises(UnsafeCheckpointError, match=r"epoch_1\.pth.*system"):
        train_tool.main([DEMO, "--work-dir", str(tmp_path), "--resume", "--cfg-options", *options])
    assert not (tmp_path / "pwned").exists()


def test_ddp_with_two_gloo_processes(tmp_path):
    options = tiny_options(tmp_path / "data")
    result = run_tool(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",  # torchrun picks a free port itself: no clash with other runs
            "--nproc_per_node",
            "2",
            "tools/train.py",
            DEMO,
            "--launcher",
            "pytorch",
            "--work-dir",
            str(tmp_path / "work"),
            "--cfg-options",
            *options,
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = torch.load(tmp_path / "work" / "epoch_1.pth", map_location="cpu", weights_only=False)
    # 4 images, 2 processes, batch 2 per process: one iteration per epoch.
    assert ckpt["meta"]["iter"] == 1
    # The package's messages go through the run's logger: once per run, in the log file too.
    console = result.stdout + result.stderr
    assert console.count("split 'train' at") == 1  # a package warning, rank 0 only
    assert console.count("Start-up (train):") == 1
    assert "device:     cpu, 2 processes (pytorch)" in console
    log = _newest_log(tmp_path / "work")
    assert log.count("Param group decay") == 1
    assert "distributed backend: gloo" in log
    assert "nccl" not in log.split("Config:")[0]  # the runtime environment names gloo only


def test_a_checkpointed_run_says_it_runs_on_mimalloc(tmp_path):
    options = [*tiny_options(tmp_path / "data"), "model.backbone.grad_checkpointing=True"]
    command = ["tools/train.py", DEMO, "--work-dir", str(tmp_path / "work"), "--cfg-options"]
    result = run_tool([*command, *options])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "allocator:  mimalloc (LD_PRELOAD; MTLORA_ALLOCATOR=tuned or glibc" in result.stdout
    assert "activation checkpointing is on" not in _newest_log(tmp_path / "work")  # no fallback


def _newest_log(work_dir) -> str:
    logs = sorted(work_dir.glob("*/*.log"), key=lambda p: log_dir_order(p.parent.name))
    return logs[-1].read_text()


def test_console_summary_full_log_and_one_data_root(tmp_path):
    data_root = tmp_path / "data"
    options = [o for o in tiny_options(data_root) if ".dataset.data_root=" not in o]
    work_dir = tmp_path / "work"
    result = run_tool(
        [
            "tools/train.py",
            DEMO,
            "--data-root",
            str(data_root),
            "--work-dir",
            str(work_dir),
            "--cfg-options",
            *options,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout
    # Every loader read --data-root (the synthetic data was written there).
    assert f"train data: 4 images from {data_root} (synthetic, written by this run)" in console
    assert f"val data:   2 images from {data_root} (synthetic)\n" in console
    assert "device:     cpu, 1 process, 1 torch thread(s)" in console
    assert "trainable of" in console
    assert "weights:    new run" in console
    # The dump of environment and config is in the log file only, without a false GPU count.
    for dumped in ("System environment", "Config:", "Hooks will be executed"):
        assert dumped not in console
    log = _newest_log(work_dir)
    for dumped in ("System environment", "Config:", "Hooks will be executed", "Param group decay"):
        assert dumped in log
    assert "GPU number" not in log
    assert "processes: 1" in log
    assert "FileClient" not in console + log  # mmengine's own deprecation notice is dropped
    assert "Exp name: " in log
    assert "Exp name: " not in console  # mmengine repeats it every epoch
    assert console.count("Param group decay") == 0  # set-up detail: log file only
    assert "WARNING - PascalContextMT split 'train' at" in console  # 4 images, not 4998
    assert "is synthetic data (4 images; its settings in" in console  # known, not guessed
    # At the end, each metric's best and last value with their epoch.
    table = console[console.index("Validation metrics, best and last:") :]
    assert "semseg/mIoU" in table
    assert "(lower is better)" in table.split("normals/mean")[1].splitlines()[0]
    assert "INFO:mtlora_vision" not in console + result.stderr


def test_predict_tool_on_own_images_of_any_size(trained, tmp_path):
    _, work_dir, options = trained
    predict = load_tool("predict")
    image = (torch.rand(50, 70, 3) * 255).byte().numpy()
    path = tmp_path / "street.png"
    cv2.imwrite(str(path), image)
    ckpt = str(work_dir / "epoch_1.pth")
    out = tmp_path / "out"
    predict.main([DEMO, ckpt, str(path), "--out-dir", str(out), "--cfg-options", *options])
    semseg = cv2.imread(str(out / "semseg" / "street.png"), cv2.IMREAD_UNCHANGED)
    assert semseg.shape == (50, 70)
    assert semseg.max() < 21
    assert cv2.imread(str(out / "normals" / "street.png")).shape == (50, 70, 3)
    figure = cv2.imread(str(out / "show" / "street.png"))
    assert figure.shape[1] > 2 * figure.shape[0]  # input once beside one panel per task
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="missing"):
        predict.main([DEMO, ckpt, missing, "--out-dir", str(out), "--cfg-options", *options])
    # Folders and glob patterns are accepted; a size the backbone cannot take names the flag.
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        cv2.imwrite(str(folder / name), image)
    (folder / "notes.txt").write_text("not an image")
    out2 = tmp_path / "out2"
    predict.main([DEMO, ckpt, str(folder), str(tmp_path / "*.png"), "--out-dir", str(out2),
                  "--no-show", "--cfg-options", *options])  # fmt: skip
    assert sorted(p.name for p in (out2 / "sal").iterdir()) == ["a.png", "b.png", "street.png"]
    with pytest.raises(ValueError, match=r"--img-size 100 100: .* use e\.g\. --img-size 96 96"):
        predict.main([DEMO, ckpt, str(path), "--out-dir", str(out), "--img-size", "100", "100",
                      "--cfg-options", *options])  # fmt: skip


def test_without_pretrained_weights_checkpoints_hold_everything(tmp_path):
    # Random frozen weights cannot be reloaded from a source, so they must be saved.
    work_dir = tmp_path / "work"
    options = tiny_options(tmp_path / "data")
    train_tool.main([DEMO, "--work-dir", str(work_dir), "--cfg-options", *options])
    ckpt = torch.load(work_dir / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["state_dict_content"] == "full"
    assert any(k.endswith("base_layer.weight") for k in ckpt["state_dict"])


def test_test_tool_evaluates_in_bf16_when_asked(trained, caplog):
    root, work_dir, options = trained
    args = [DEMO, str(work_dir / "epoch_1.pth"), "--cfg-options", *options]
    fp32 = test_tool.main([*args, "--work-dir", str(root / "t32")])  # pinned by conftest.py
    with caplog.at_level(logging.INFO, logger="mtlora_vision.engine.precision"):
        bf16 = test_tool.main([*args, "--work-dir", str(root / "t16"), "--precision", "bf16"])
    assert "Precision: bf16 autocast on cpu (asked" in caplog.text
    assert bf16["normals/mean"] != fp32["normals/mean"]  # the forward ran in bf16 ...
    assert bf16["normals/mean"] == pytest.approx(fp32["normals/mean"], abs=1.0)  # ... closely
    assert bf16["sal/maxF"] == pytest.approx(fp32["sal/maxF"], abs=2.0)
