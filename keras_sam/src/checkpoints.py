"""`keras.callbacks.BackupAndRestore` in a multi-process run (JAX's
processes, TensorFlow's `MultiWorkerMirroredStrategy` workers).

The callback writes one HDF5 file, `backup_dir/latest.weights.h5`, from
every process that runs it. Processes sharing a `backup_dir` collide on
that file's lock (`BlockingIOError`), and the processes left waiting for
the failed one hang until JAX's shutdown barrier times out. And Keras opens
the file, emptying it, before it reads the values to write: JAX dispatches
steps asynchronously, so when one process dies mid-epoch the others run on
to the epoch's end, open their backups and wait there for steps that never
finish, and the job's end leaves their backups empty. `SAMModel.fit` gives
each process a subdirectory of its own and waits for the steps to finish
before each backup (`per_process`).
"""

from __future__ import annotations

import copy
import os
import posixpath

import keras

from keras_sam.src import keras_internals


def process_directory(model: keras.Model) -> str | None:
    """This process's subdirectory name in a multi-process run of `model`:
    `"process_<i>"` for JAX's process i, `"worker_<i>"` for TensorFlow's
    worker i of a `MultiWorkerMirroredStrategy`; `None` in one process."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if jax.process_count() > 1:
            return f"process_{jax.process_index()}"
    elif backend == "tensorflow":
        strategy = model.distribute_strategy
        if keras_internals.multi_worker(strategy):
            resolver = strategy.cluster_resolver
            return f"{resolver.task_type}_{resolver.task_id}"
    return None


def in_subdirectory(
    callback: keras.callbacks.BackupAndRestore, name: str
) -> keras.callbacks.BackupAndRestore:
    """A copy of `callback` (of its class, with its other attributes) that
    backs up to `backup_dir/name`, `save_freq`, `double_checkpoint` and
    `delete_checkpoint` as given; `callback` is left as it was."""
    moved = copy.copy(callback)
    keras.callbacks.BackupAndRestore.__init__(
        moved,
        posixpath.join(os.fspath(callback.backup_dir), name),
        save_freq=callback.save_freq,
        double_checkpoint=callback.double_checkpoint,
        delete_checkpoint=callback.delete_checkpoint,
    )
    return moved


class StepsDone(keras.callbacks.Callback):
    """Waits until the steps dispatched so far have run, where a backup
    may be written next: at each epoch's end, and after each batch if
    `every_batch` (a `BackupAndRestore` with an integer `save_freq`)."""

    def __init__(self, every_batch: bool):
        super().__init__()
        self.every_batch = every_batch

    def _wait(self) -> None:
        keras.ops.convert_to_numpy(self.model.optimizer.iterations)

    def on_epoch_end(self, epoch, logs=None):
        self._wait()

    def on_train_batch_end(self, batch, logs=None):
        if self.every_batch:
            self._wait()


def per_process(callbacks: list, model: keras.Model) -> list:
    """`callbacks`, in a multi-process run of `model` with each
    `BackupAndRestore` backing up to this process's subdirectory of its
    `backup_dir` once the steps before the backup have run (`StepsDone`);
    unchanged in a one-process run."""
    name = process_directory(model)
    if name is None:
        return callbacks
    result = []
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            every_batch = callback.save_freq != "epoch"
            result += [StepsDone(every_batch), in_subdirectory(callback, name)]
        else:
            result.append(callback)
    return result
