"""Training that a preemption kills, resumed by `BackupAndRestore`.

`python preemption.py RESULTS BACKUPS RUN...` trains each RUN and saves what
it trained to (`RESULTS`, an .npz). A RUN is `CASE` (an uninterrupted
`fit`), `CASE/resumable` (a `fit` with
`keras.callbacks.BackupAndRestore(BACKUPS/CASE)`: a fresh run, or the resume
of one killed before) or `CASE/killed` (the same, preempted at the end of
batch `KILL_BATCH` of epoch `KILL_EPOCH`, its epoch 0 backed up). The killed
runs come last, each one started inside the previous one's `fit` at its
preemption, and the last one SIGKILLs the process (a preempted host: no
cleanup), so that every killed run dies mid-epoch.

With `KERAS_DISTRIBUTION_NUM_PROCESSES` set (JAX), the process is one of a
multi-process run: `keras.distribution.initialize()` joins it, every run
trains under `DataParallel` over the processes' devices, each process
feeding its own rows of every global batch, and each process saves its
results to `RESULTS` with `.RANK` before the suffix. The last process alone
is preempted; the others wait in the step's collectives until the test's
harness kills them. Every process passes the same `BACKUPS/CASE`: SAMModel
backs each one up to a subdirectory of its own.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys
from collections.abc import Callable

if __name__ == "__main__":
    # `python tests/support/SCRIPT.py`: tests/ on the path, so that the
    # `support` package imports as it does under pytest.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from keras_sam import SAMModel
from support.helpers import LR, compile_sgd, reference_mlp
from support.processes import SavedResults
from support.reference import Config, Reference, init_params, make_batches

# name -> (SAMModel options, the same point spelled out for the reference).
# LookSAM with k=2 ascends on even steps: an epoch of 3 batches ends with
# a reuse step next, which needs the backed-up `g_v`.
CASES = {
    "looksam": (
        dict(method="looksam", rho=0.1, k=2),
        Config(reuse="look", k=2, reuse_scale="stored", rho=0.1),
    ),
    "fsam": (dict(method="fsam", rho=0.5), Config(friendly=True, rho=0.5)),
}
EPOCHS, BATCHES, BATCH = 3, 3, 16
KILL_EPOCH, KILL_BATCH = 1, 1  # after epoch 0's backup, mid-epoch
MULTI_PROCESS = "KERAS_DISTRIBUTION_NUM_PROCESSES" in os.environ


def kill_this_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class Preemption(keras.callbacks.Callback):
    """Calls `preempt` at the end of batch `batch` of epoch `epoch`, once
    the batch's step has run. JAX dispatches steps asynchronously: without
    the wait, a process of a multi-process run can die while its peers
    still write their epoch-end backups, and the harness, killing them at
    once, leaves those truncated. The step's collectives need every
    process, so each one has written its backup when the step is done."""

    def __init__(self, epoch: int, batch: int, preempt: Callable):
        super().__init__()
        self.preempt_at = (epoch, batch)
        self.preempt = preempt
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.preempt_at:
            keras.tree.map_structure(keras.ops.convert_to_numpy, logs)
            self.preempt()


def data(process: int = 0, processes: int = 1):
    """The training set, `BATCHES` batches of `BATCH`; in a multi-process
    run, this process's contiguous part of every batch."""
    x, y = make_batches(n_batches=BATCHES, batch=BATCH)
    part = BATCH // processes
    x, y = (a[:, process * part : (process + 1) * part] for a in (x, y))
    return x.reshape(-1, x.shape[-1]).astype("float32"), y.reshape(-1)


def flat(variables: list) -> np.ndarray:
    return np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(v)) for v in variables]
    )


def train(
    run: str,
    backups: pathlib.Path,
    process: int,
    processes: int,
    preempt: Callable | None = None,
) -> dict:
    """Trains `run` (see the module's docstring; `CASE/killed` calls
    `preempt`, if given, at its preemption): its weights, SAM state and the
    epochs that its `fit` ran."""
    case, _, mode = run.partition("/")
    sam = SAMModel(reference_mlp(init_params()), **CASES[case][0])
    compile_sgd(sam)
    callbacks = []
    if mode:
        callbacks.append(keras.callbacks.BackupAndRestore(backups / case))
    if mode == "killed" and preempt is not None:
        callbacks.append(Preemption(KILL_EPOCH, KILL_BATCH, preempt))
    x, y = data(process, processes)
    history = sam.fit(
        x,
        y,
        batch_size=BATCH // processes,
        epochs=EPOCHS,
        shuffle=False,
        callbacks=callbacks,
        verbose=0,
    )
    state = sam.sam_state
    return {
        "weights": flat(sam.inner.weights),
        "iterations": flat([state.iterations]),
        "g_v": flat(state.g_v) if state.g_v else np.zeros(0),
        "ema": flat(state.ema) if state.ema else np.zeros(0),
        "epochs": np.array(history.epoch),
    }


def reference(case: str) -> dict:
    """The NumPy reference's weights and state after `EPOCHS` epochs of the
    same batches."""
    ref = Reference(CASES[case][1], init_params(), LR)
    x, y = make_batches(n_batches=BATCHES, batch=BATCH)
    for _ in range(EPOCHS):
        for b in range(BATCHES):
            ref.step(x[b], y[b])
    return {
        "weights": ref.theta,
        "iterations": np.array([ref.step_count]),
        "g_v": ref.g_v,
        "ema": ref.m,
    }


def train_killed(
    runs: list, backups: pathlib.Path, process: int, processes: int
) -> None:
    """Trains `runs[0]`, preempted by training the other runs the same way,
    the last one by SIGKILL (in a multi-process run, the last process's
    only: the others are never preempted)."""
    if len(runs) > 1:

        def preempt():
            train_killed(runs[1:], backups, process, processes)

    else:
        preempt = kill_this_process if process == processes - 1 else None
    train(runs[0], backups, process, processes, preempt)


def main(results: str, backups: str, runs: list[str]) -> None:
    process, processes = 0, 1
    path = pathlib.Path(results)
    if MULTI_PROCESS:
        # No TensorFlow in this run, as on a pod that does not install it:
        # `initialize()` seeds Keras' generator across the processes, and
        # seeding imports TensorFlow (for `tf.random`) if it can, ~5 s a
        # process of a run that never uses it (NumPy arrays feed `fit`).
        sys.modules.setdefault("tensorflow", None)
        keras.distribution.initialize()
        import jax

        process, processes = jax.process_index(), jax.process_count()
        path = path.with_suffix(f".{process}.npz")
        distribution = keras.distribution.DataParallel(
            devices=keras.distribution.list_devices(), auto_shard_dataset=False
        )
        keras.distribution.set_distribution(distribution)
    out = SavedResults(path)
    backups = pathlib.Path(backups)
    for run in runs:
        if not run.endswith("/killed"):
            trained = train(run, backups, process, processes)
            for key, value in trained.items():
                out[f"{run}/{key}"] = value
    killed = [run for run in runs if run.endswith("/killed")]
    if killed:
        train_killed(killed, backups, process, processes)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
