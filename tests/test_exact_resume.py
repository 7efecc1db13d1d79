"""Resume is bit-exact with the demo recipe (augmentation, LoRA dropout, DropPath), 1 or 2 ranks.

Every run here is a tiny version of the shipped demo config through ``tools/train.py``; final
checkpoints (all weights, BN statistics, optimizer state) are compared with ``torch.equal``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_utils import DEMO, REPO, tiny_options
from torch.utils.data import DataLoader

from mtlora_vision.datasets.collate import multitask_collate
from mtlora_vision.datasets.pascal_context import PascalContextMT
from mtlora_vision.datasets.sampler import EpochSeededSampler, SampleKey
from mtlora_vision.datasets.synthetic import make_synthetic_dataset
from mtlora_vision.engine.randomness import TrainingRandomnessHook

ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
# The demo's own randomness (LoRA dropout 0.05) plus DropPath, on top of the augmentation.
RANDOM_MODEL = ["model.adapter.dropout=0.05", "model.backbone.drop_path_rate=0.1"]


def train_cmd(
    root: Path, work_dir: Path, epochs: int, workers: int, *extra: str, options: tuple = ()
) -> list[str]:
    options = (
        *tiny_options(root / "data", epochs=epochs, workers=workers),
        *RANDOM_MODEL,
        *options,
    )
    return [
        sys.executable, "tools/train.py", DEMO, "--work-dir", str(work_dir), *extra,
        "--cfg-options", *options,
    ]  # fmt: skip


def run(cmd: list[str], ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert (result.returncode == 0) == ok, result.stderr[-3000:]
    return result


def resume_from_first_epoch(
    root: Path, work_dir: Path, *options: str
) -> subprocess.CompletedProcess:
    """Resume the reference run from its epoch-1 checkpoint (copied) with changed options."""
    work_dir.mkdir()
    shutil.copy(root / "full" / "epoch_1.pth", work_dir / "epoch_1.pth")
    resume = ("--resume", str(work_dir / "epoch_1.pth"))
    return run(train_cmd(root, work_dir, 3, 0, *resume, options=options))


def assert_bit_identical(expected_path: Path, got_path: Path) -> None:
    """Same weights, buffers (BN statistics) and optimizer state, bit for bit."""
    expected = torch.load(expected_path, map_location="cpu", weights_only=False)
    got = torch.load(got_path, map_location="cpu", weights_only=False)
    assert got["meta"]["iter"] == expected["meta"]["iter"]
    assert set(got["state_dict"]) == set(expected["state_dict"])
    assert any("running_var" in k for k in expected["state_dict"])  # BN statistics compared too
    differ = [
        k for k, v in expected["state_dict"].items() if not torch.equal(got["state_dict"][k], v)
    ]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    opt_expected, opt_got = expected["optimizer"], got["optimizer"]
    assert opt_got["param_groups"] == opt_expected["param_groups"]
    assert set(opt_got["state"]) == set(opt_expected["state"])
    for index, state in opt_expected["state"].items():
        for name, value in state.items():
            assert torch.equal(
                torch.as_tensor(opt_got["state"][index][name]), torch.as_tensor(value)
            )
    assert got["param_schedulers"] == expected["param_schedulers"]


def test_augmentation_is_a_function_of_seed_epoch_and_index_whatever_the_workers(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", "pascal_context", 6, 1, (48, 64), seed=0)
    dataset = PascalContextMT(root, "train", img_size=(32, 32), augment=True, use_cache=False)

    def epoch_inputs(workers: int, epoch: int) -> torch.Tensor:
        sampler = EpochSeededSampler(dataset, shuffle=True, seed=7)
        sampler.set_epoch(epoch)
        loader = DataLoader(
            dataset, batch_size=2, sampler=sampler, num_workers=workers,
            collate_fn=multitask_collate,
        )  # fmt: skip
        return torch.cat([batch["inputs"] for batch in loader])

    assert torch.equal(epoch_inputs(0, 1), epoch_inputs(2, 1))
    assert not torch.equal(epoch_inputs(0, 1), epoch_inputs(0, 2))
    key = SampleKey(index=3, epoch=5, seed=7)
    torch.manual_seed(1)
    first = dataset[key]["inputs"]
    torch.manual_seed(2)
    random.seed(2)
    assert torch.equal(dataset[key]["inputs"], first)  # no global random state involved
    assert not torch.equal(dataset[SampleKey(3, 6, 7)]["inputs"], first)  # next epoch: new draw


class _Runner:
    """What TrainingRandomnessHook reads from mmengine's Runner."""

    def __init__(self, seed: int, iteration: int) -> None:
        self.seed, self.iter, self.cfg = seed, iteration, {"randomness": {"seed": seed}}


def test_step_randomness_depends_only_on_seed_and_iteration():
    hook = TrainingRandomnessHook()
    hook.before_train_iter(_Runner(0, 5), 0)
    mask = torch.nn.functional.dropout(torch.ones(64), 0.5)
    torch.rand(1000)  # whatever was drawn before (validation, DataLoader seeds...)
    hook.before_train_iter(_Runner(0, 5), 0)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), mask)
    hook.before_train_iter(_Runner(0, 6), 0)
    assert not torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), mask)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The reference: 3 epochs in one go, no data-loader workers."""
    root = tmp_path_factory.mktemp("exact")
    run(train_cmd(root, root / "full", epochs=3, workers=0))
    return root


def test_kill_9_at_a_random_moment_then_resume_with_workers_is_bit_exact(uninterrupted, tmp_path):
    # Resumes at an epoch boundary (the demo saves per epoch), with 2 data-loader workers where
    # the reference had none.
    root = uninterrupted
    work_dir = tmp_path / "killed"
    cmd = train_cmd(root, work_dir, epochs=3, workers=2)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=ENV, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while not (work_dir / "epoch_1.pth").exists() and time.time() < deadline:
        assert proc.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.05)
    delay = random.Random().uniform(0.0, 0.5)  # within epochs 2 and 3 (about 1 s each)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work_dir / "epoch_3.pth").exists(), "killed too late to test anything"
    resumed = run([*cmd[:5], "--resume", *cmd[5:]])
    assert "weights:    resumed from" in resumed.stdout  # the start-up summary
    assert_bit_identical(root / "full" / "epoch_3.pth", work_dir / "epoch_3.pth")


def test_resume_from_a_checkpoint_inside_an_epoch_is_bit_exact(uninterrupted, tmp_path):
    # Checkpoints every iteration (2 per epoch); iter_3.pth is written inside epoch 2. mmengine's
    # loop would restart epoch 2 and train its first batch twice; ours skips it.
    root = uninterrupted
    by_iter = (
        "default_hooks.checkpoint.by_epoch=False",
        "default_hooks.checkpoint.interval=1",
        "default_hooks.checkpoint.max_keep_ckpts=-1",
    )
    run(train_cmd(root, tmp_path / "by_iter", 3, 0, options=by_iter))
    middle = torch.load(tmp_path / "by_iter" / "iter_3.pth", weights_only=False)["meta"]
    assert (middle["epoch"], middle["iter"]) == (1, 3)  # one epoch done, one batch into epoch 2
    work_dir = tmp_path / "resumed"
    work_dir.mkdir()
    shutil.copy(tmp_path / "by_iter" / "iter_3.pth", work_dir / "iter_3.pth")
    resume = ("--resume", str(work_dir / "iter_3.pth"))
    resumed = run(train_cmd(root, work_dir, 3, 2, *resume, options=by_iter))  # with 2 workers
    assert "first 1 of 2 batches were trained before the checkpoint" in resumed.stdout
    assert not (work_dir / "iter_7.pth").exists()  # 6 iterations in all, as planned
    assert_bit_identical(root / "full" / "epoch_3.pth", work_dir / "iter_6.pth")


def test_two_gloo_processes_resume_bit_exactly(tmp_path):
    def ddp(work_dir: Path, *extra: str) -> list[str]:
        cmd = train_cmd(tmp_path, work_dir, 2, 0, "--launcher", "pytorch", *extra)
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        return [sys.executable, *torchrun, *cmd[1:]]

    run(ddp(tmp_path / "full"))
    ckpt = torch.load(tmp_path / "full" / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["iter"] == 1  # 4 images, 2 processes, batch 2 per process
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "full" / "epoch_1.pth", tmp_path / "resumed" / "epoch_1.pth")
    run(ddp(tmp_path / "resumed", "--resume", str(tmp_path / "resumed" / "epoch_1.pth")))
    assert_bit_identical(tmp_path / "full" / "epoch_2.pth", tmp_path / "resumed" / "epoch_2.pth")


def _lr(path: Path) -> float:
    return torch.load(path, map_location="cpu", weights_only=False)["optimizer"]["param_groups"][0][
        "lr"
    ]


def test_changed_lr_schedule_length_and_clipping_take_effect_on_resume(uninterrupted, tmp_path):
    root, work_dir = uninterrupted, tmp_path / "changed"
    changes = ("optim_wrapper.optimizer.lr=2e-4", "train_cfg.max_epochs=4")
    result = resume_from_first_epoch(root, work_dir, *changes, "optim_wrapper.clip_grad.max_norm=1")
    log = result.stdout + result.stderr
    line = next(x for x in log.splitlines() if "Resume with changed settings" in x)
    assert "optim_wrapper.optimizer.lr: 0.002 -> 0.0002" in line
    assert "train_cfg.max_epochs: 3 -> 4" in line
    assert "optim_wrapper.clip_grad.max_norm: 5.0 -> 1" in line
    # Epoch 2 starts the cosine schedule at its base value, the new lr (mmengine kept 2e-3).
    assert "lr now [0.0002]" in line
    assert torch.load(work_dir / "epoch_4.pth", weights_only=False)["meta"]["epoch"] == 4
    # Cosine from the base lr to eta_min: the reference's lr at iteration 6 gives the phase.
    eta_min = 2e-5  # the demo's
    phase = (_lr(root / "full" / "epoch_3.pth") - eta_min) / (2e-3 - eta_min)
    assert _lr(work_dir / "epoch_3.pth") == pytest.approx(eta_min + (2e-4 - eta_min) * phase)
    optimizer = torch.load(work_dir / "epoch_3.pth", weights_only=False)["optimizer"]
    assert optimizer["base_param_settings"]["lr"] == _lr(work_dir / "epoch_3.pth")  # logged base_lr


def test_a_changed_model_shape_on_resume_is_an_error_naming_the_setting(uninterrupted, tmp_path):
    work_dir = tmp_path / "reshaped"
    work_dir.mkdir()
    shutil.copy(uninterrupted / "full" / "epoch_1.pth", work_dir / "epoch_1.pth")
    cmd = train_cmd(
        uninterrupted, work_dir, 3, 0, "--resume", str(work_dir / "epoch_1.pth"),
        options=(
            "model.adapter.shared_rank=4", "model.adapter.dropout=0.1",
            "train_dataloader.batch_size=1",  # iterations and schedule counted in batches of 2
        ),
    )  # fmt: skip
    result = run(cmd, ok=False)
    assert "Cannot resume" in result.stderr
    assert "model.adapter.shared_rank: 2 -> 4" in result.stderr
    assert "train_dataloader.batch_size: 2 -> 1" in result.stderr
    assert "dropout" not in result.stderr.splitlines()[-1]  # regularisation may change
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["epoch_1.pth"]


def test_seed_flag_seeds_the_run_and_deterministic_algorithms_run_on_cpu(uninterrupted, tmp_path):
    work_dir = tmp_path / "seeded"
    result = run(train_cmd(uninterrupted, work_dir, 1, 0, "--seed", "5", "--deterministic"))
    assert "deterministic: True" in result.stdout + result.stderr
    got = torch.load(work_dir / "epoch_1.pth", map_location="cpu", weights_only=False)
    ref = torch.load(uninterrupted / "full" / "epoch_1.pth", map_location="cpu", weights_only=False)
    assert (got["meta"]["seed"], ref["meta"]["seed"]) == (5, 0)
    assert not torch.equal(got["state_dict"]["backbone.patch_embed.proj.weight"],
                           ref["state_dict"]["backbone.patch_embed.proj.weight"])  # fmt: skip
