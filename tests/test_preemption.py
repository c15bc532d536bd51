"""Preemption-safe training: a SAMModel killed mid-epoch by SIGKILL and
resumed by `keras.callbacks.BackupAndRestore` in a new process ends as the
uninterrupted run, bit for bit, weights and SAM state (the step counter,
LookSAM's `g_v`, F-SAM's EMA), on every backend and on 2 JAX processes
sharing one `backup_dir`. Mid-epoch backups (`save_freq=N`) do not resume
exactly: Keras re-runs the restored epoch from its first batch (pinned
here, so that a Keras release that fixes it is noticed)."""

import json
import pathlib
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND
from support.helpers import FEW_STEPS_EAGERLY, compile_sgd, reference_mlp
from support.preemption import BATCH, CASES, EPOCHS, data, reference
from support.processes import (
    SUPPORT,
    environment,
    jax_cluster,
    run_python,
    run_ranks,
)
from support.reference import init_params

from keras_sam.src import checkpoints

SCRIPT = SUPPORT / "preemption.py"
STATE = {"looksam": "g_v", "fsam": "ema"}


def _killed(args: list) -> None:
    """Runs `preemption.py *args`, which must end by SIGKILL."""
    result = subprocess.run(
        [sys.executable, SCRIPT, *map(str, args)],
        env=environment(BACKEND),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]


def _metadata(directory: pathlib.Path) -> dict:
    return json.loads((directory / "training_metadata.json").read_text())


# ---- One process, this backend ---------------------------------------------


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """A process trains each case uninterrupted, then each with backups,
    and is SIGKILLed with both mid-epoch; a new process resumes both."""
    directory = tmp_path_factory.mktemp("preemption")
    backups = directory / "backups"
    first, resumed = directory / "first.npz", directory / "resumed.npz"
    _killed([first, backups, *CASES, *(f"{c}/killed" for c in CASES)])
    after_kill = {c: _metadata(backups / c) for c in CASES}
    run_python(
        [SCRIPT, resumed, backups, *(f"{c}/resumable" for c in CASES)],
        backend=BACKEND,
    )
    return {
        **np.load(first),
        **np.load(resumed),
        "after_kill": after_kill,
        "left": sorted(p.name for p in backups.iterdir()),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_a_killed_run_leaves_its_last_epochs_backup(one_process, case):
    """In `backup_dir` itself: one process needs no subdirectory."""
    assert one_process["after_kill"][case] == {"epoch": 1, "batch": 0}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_resumed_run_equals_the_uninterrupted_run(one_process, case):
    resumed = f"{case}/resumable"
    np.testing.assert_array_equal(one_process[f"{resumed}/epochs"], [1, 2])
    for key in ("weights", "iterations", STATE[case]):
        np.testing.assert_array_equal(
            one_process[f"{resumed}/{key}"],
            one_process[f"{case}/{key}"],
            err_msg=key,
        )


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_uninterrupted_run_follows_the_reference(one_process, case):
    expected = reference(case)
    assert one_process[f"{case}/iterations"] == expected["iterations"]
    for key in ("weights", STATE[case]):
        np.testing.assert_allclose(
            one_process[f"{case}/{key}"],
            expected[key],
            rtol=1e-5,
            atol=1e-6,
            err_msg=key,
        )


@pytest.mark.slow
def test_a_completed_resume_deletes_its_backup(one_process):
    assert one_process["left"] == []


# ---- Two JAX processes, one backup_dir -------------------------------------

jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="multi-process keras.distribution is JAX's"
)


def _ranks(args: list, killed_ok: bool = False) -> None:
    run_ranks(
        [SCRIPT, *args], jax_cluster(2), backend="jax", killed_ok=killed_ok
    )


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """2 processes (1 device each) train `looksam` uninterrupted, then with
    backups in one shared `backup_dir`, until process 1 is SIGKILLed
    mid-epoch (and process 0 with it, by the harness); 2 new processes
    resume."""
    directory = tmp_path_factory.mktemp("preemption_jax")
    backups = directory / "backups"
    _ranks(
        [directory / "first.npz", backups, "looksam", "looksam/killed"],
        killed_ok=True,
    )
    after_kill = {p.name: _metadata(p) for p in (backups / "looksam").iterdir()}
    _ranks([directory / "resumed.npz", backups, "looksam/resumable"])
    return {
        "after_kill": after_kill,
        "left": sorted(p.name for p in (backups / "looksam").iterdir()),
        "ranks": [
            {
                **np.load(directory / f"first.{rank}.npz"),
                **np.load(directory / f"resumed.{rank}.npz"),
            }
            for rank in range(2)
        ],
    }


@pytest.mark.slow
@jax_only
def test_processes_sharing_a_backup_dir_back_up_to_their_own(two_processes):
    """Not one file for both (`BlockingIOError` from HDF5's lock, and the
    other process hanging); each process deletes its own once resumed."""
    assert two_processes["after_kill"] == {
        "process_0": {"epoch": 1, "batch": 0},
        "process_1": {"epoch": 1, "batch": 0},
    }
    assert two_processes["left"] == []


@pytest.mark.slow
@jax_only
@pytest.mark.parametrize("rank", [0, 1])
def test_two_processes_resume_as_the_uninterrupted_run(two_processes, rank):
    """Process 0, whose peer died, ran on to epoch 1's end (JAX dispatches
    steps asynchronously) and waited there: its backup of epoch 0 is
    whole, because SAMModel waits for the steps before Keras opens (and
    empties) the backup file."""
    results = two_processes["ranks"][rank]
    np.testing.assert_array_equal(results["looksam/resumable/epochs"], [1, 2])
    for key in ("weights", "iterations", "g_v"):
        np.testing.assert_array_equal(
            results[f"looksam/resumable/{key}"],
            results[f"looksam/{key}"],
            err_msg=key,
        )
        np.testing.assert_array_equal(
            results[f"looksam/{key}"],
            two_processes["ranks"][0][f"looksam/{key}"],
            err_msg=f"{key}: rank {rank} against rank 0",
        )
    expected = reference("looksam")
    for key in ("weights", "g_v"):
        np.testing.assert_allclose(
            results[f"looksam/{key}"], expected[key], rtol=1e-5, atol=1e-6
        )


# ---- Mid-epoch backups (save_freq=N): Keras' limit --------------------------


class _Interrupt(keras.callbacks.Callback):
    """Raises `KeyboardInterrupt` at the end of batch `batch` of epoch
    `epoch` (what a SIGKILL leaves on disk is the same: the last backup)."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


def _fit_with_batch_backups(directory, interrupt_at=None):
    """A fresh plain Keras model's `fit` with `BackupAndRestore(directory,
    save_freq=1)`, interrupted at `interrupt_at` (epoch, batch) if given:
    its optimizer's step count and the epochs its `fit` ran (`None` if
    interrupted)."""
    model = reference_mlp(init_params())
    compile_sgd(model, run_eagerly=FEW_STEPS_EAGERLY)
    callbacks = [keras.callbacks.BackupAndRestore(directory, save_freq=1)]
    if interrupt_at is not None:
        callbacks.append(_Interrupt(*interrupt_at))
    epochs = None
    try:
        history = model.fit(
            *data(),
            batch_size=BATCH,
            epochs=EPOCHS,
            shuffle=False,
            callbacks=callbacks,
            verbose=0,
        )
        epochs = history.epoch
    except KeyboardInterrupt:
        pass
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return steps, epochs


def test_mid_epoch_backups_rerun_the_restored_epoch_from_its_start(tmp_path):
    """Keras 3.15 pinned, for any Keras model (a SAMModel's step counter
    and state follow its weights): a mid-epoch backup restores the weights
    of batch `b` of epoch `e` and re-runs epoch `e` from batch 0 (Keras
    writes `b` to the backup and never reads it), so the resumed run takes
    `b + 1` steps more than the uninterrupted one. And a backup made in the
    resumed run's first epoch records epoch 0 (the callback's epoch count
    starts at 0 in each `fit`): a second preemption there restarts the run
    from epoch 0. When this test fails, Keras changed: revisit the docs'
    advice to back up at epoch ends."""
    steps, epochs = _fit_with_batch_backups(tmp_path, interrupt_at=(1, 1))
    assert (steps, epochs) == (5, None)
    assert _metadata(tmp_path) == {"epoch": 1, "batch": 1}
    # Resumed with the weights of step 5, from batch 0 of epoch 1 (an exact
    # resume would start at batch 2: 5 + 1 steps would not reach it).
    steps, epochs = _fit_with_batch_backups(tmp_path, interrupt_at=(1, 0))
    assert (steps, epochs) == (6, None)
    assert _metadata(tmp_path) == {"epoch": 0, "batch": 0}
    steps, epochs = _fit_with_batch_backups(tmp_path)
    assert epochs == [0, 1, 2]
    assert steps == 6 + EPOCHS * 3  # against EPOCHS * 3 uninterrupted


# ---- checkpoints.per_process -----------------------------------------------


class _Backups(keras.callbacks.BackupAndRestore):
    """A user's subclass."""

    tag = "mine"


def test_a_process_backs_up_to_its_own_subdirectory(tmp_path):
    callback = _Backups(tmp_path, save_freq=3, double_checkpoint=True)
    moved = checkpoints.in_subdirectory(callback, "process_1")
    assert type(moved) is _Backups and moved.tag == "mine"
    assert moved.backup_dir == f"{tmp_path}/process_1"
    assert moved.save_freq == 3 and moved.double_checkpoint is True
    assert moved.delete_checkpoint is True
    assert callback.backup_dir == tmp_path  # the user's callback unchanged
