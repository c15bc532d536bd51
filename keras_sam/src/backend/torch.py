"""The SAM train step on PyTorch: `backward()` for pass 1 as Keras' own
step does, `autograd.grad` for pass 2."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import keras
import torch

from keras_sam.src import keras_internals
from keras_sam.src.trainer import PassOne, SAMTrainer


class _PassInputs(NamedTuple):
    non_trainable: list  # from before pass 1
    metrics: list
    rng: tuple  # the global torch RNG states from before pass 1
    x: object
    y: object
    sample_weight: object
    share: float = 1.0  # one process: one replica


def _rng_snapshot():
    """The global torch RNG states (CPU and initialised CUDA devices)."""
    devices = (
        list(range(torch.cuda.device_count()))
        if torch.cuda.is_initialized()
        else []
    )
    cuda = [torch.cuda.get_rng_state(d) for d in devices]
    return devices, torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replay_rng(snapshot):
    """Runs the block from the RNG state of `snapshot`, then restores the
    state it found.

    Keras' torch `dropout` draws an unseeded layer's mask from the global
    torch RNG, not from its `SeedGenerator` state: replaying the pre-pass-1
    RNG state gives pass 2 the mask of pass 1, and the RNG still advances
    once per step.
    """
    devices, cpu, cuda = snapshot
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        for device, state in zip(devices, cuda):
            torch.cuda.set_rng_state(state, device)
        yield


def _check_single_process() -> None:
    """Keras' torch trainer has no data parallelism: in a multi-process
    group, every process would train its own copy apart from the others."""
    distributed = torch.distributed
    if (
        distributed.is_available()
        and distributed.is_initialized()
        and distributed.get_world_size() > 1
    ):
        raise NotImplementedError(
            "SAMModel on the torch backend trains on one device: Keras' "
            "torch trainer does not synchronise gradients between the "
            f"{distributed.get_world_size()} processes of the initialised "
            "torch.distributed group, so each would silently train its own "
            "model. Use the JAX backend with keras.distribution or the "
            "TensorFlow backend with a tf.distribute strategy."
        )


class TorchSAMTrainer(SAMTrainer):
    def train_step(self, data):
        _check_single_process()
        self._check_plan()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        # Torch assigns in place: snapshot the model's own state (BatchNorm
        # statistics, seeds) before pass 1; SAM's own is not touched until
        # the end of the step.
        own = {id(v) for v in self._state.flat()}
        non_trainable = [
            v.value if id(v) in own else v.value.detach().clone()
            for v in self.non_trainable_variables
        ]
        rng = _rng_snapshot()
        values = [v.value.detach() for v in variables]
        metrics = [v.value for v in self.metrics_variables]
        state, loss_scale = self._state.read(), self._loss_scale()
        inputs = [
            _PassInputs(non_trainable, metrics, rng, *micro_batch)
            for micro_batch in self._micro_batches((x, y, sample_weight))
        ]
        with torch.no_grad():
            ctx = self._context(values, state, loss_scale)
        one = self._passes_one(ctx, state, inputs)
        with torch.no_grad():
            update = self._sam_update(ctx, state, one, inputs)
            self._apply_update(update, variables, non_trainable, own)
        self._track(update)
        return self._train_logs(x, y, one.y_pred, sample_weight)

    def _apply_update(self, update, variables, non_trainable, own) -> None:
        """Applies `update`; a skipped step leaves every variable as it
        was, restoring the model's own from their snapshots
        (`non_trainable`, but for the SAM state's, whose ids are `own`)."""
        learning_rate = self._learning_rate()
        if self._optimizer_takes(update):
            self.optimizer.apply(update.gradients, variables)
        self._assign_decoupled(variables, update, learning_rate)  # 0 if skipped
        if update.skipped:
            for v, value in zip(self.non_trainable_variables, non_trainable):
                if id(v) not in own:
                    v.assign(value)
        self._state.assign(update.state)

    def _release_clean_gradient(self, clean, direction) -> None:
        """Pass 1's gradient is dead once the perturbation exists (unless
        LookSAM projects onto it after pass 2): empties every list that
        holds it, so that torch frees it before pass 2 allocates its own."""
        if self._plan.keeps_gradient:
            return
        for tensors in (
            clean.scaled,
            clean.share,
            clean.total,
            clean.perturbed,
            *clean.ascents,
        ):
            if tensors is not None:
                tensors.clear()
        direction.clear()

    def _pass_one(self, values, batch, probes, u, loss_scale) -> PassOne:
        """As `keras.src.backend.torch.trainer` does it, on the variables
        (`values` unused)."""
        x, y, sample_weight = batch.x, batch.y, batch.sample_weight
        probe_values, scope = [], contextlib.nullcontext()
        if probes is not None:
            probe_values = [p.requires_grad_() for p in probes.initial(u)]
            scope = probes.scope(probe_values)
        with scope as run:
            if keras_internals.call_has_training_arg(self):
                y_pred = self(x, training=True)
            else:
                y_pred = self(x)
        self.zero_grad()
        loss = keras_internals.compute_loss(self, x, y, y_pred, sample_weight)
        self._track_loss(loss, x)
        variables = self.trainable_variables
        clean = self._differentiated(run)
        self.optimizer.scale_loss(loss).backward(
            inputs=[variables[i].value for i in clean] + probe_values
        )
        grads = [None] * len(variables)
        for i in clean:
            # Only `grads` holds pass 1's gradient (`.grad` is Keras' next
            # `zero_grad()`'s anyway), so that it can be freed early.
            grads[i], variables[i].value.grad = variables[i].value.grad, None
        pairs = None
        if probes is not None:
            gradients = [p.grad for p in probe_values]
            pairs = probes.pairs(gradients, run, loss_scale)
        return PassOne(loss.detach(), [grads], y_pred, pairs)

    def _track_loss(self, loss, x) -> None:
        """The loss tracker's update with a batch's loss, as Keras' does."""
        keras_internals.loss_tracker(self).update_state(
            loss,
            sample_weight=next(
                i for i in keras.tree.flatten(x) if i is not None
            ).shape[0],
        )

    def _micro_batch_pass_one(self, values, batch, index: int) -> PassOne:
        """The first micro-batch draws from the global RNG; the others
        replay the state it started from, as pass 2 does."""
        leaves = [value.detach().requires_grad_(True) for value in values]
        replay = _replay_rng(batch.rng) if index else contextlib.nullcontext()
        with torch.enable_grad(), replay:
            loss, y_pred, *effects = self._stateless_loss(leaves, batch)
        scaled = self.optimizer.scale_loss(loss)
        clean = self._plan.clean_indices
        grads = [None] * len(values)
        for i, g in zip(
            clean,
            torch.autograd.grad(
                scaled, [leaves[i] for i in clean], allow_unused=True
            ),
        ):
            grads[i] = g
        return PassOne(loss.detach(), [grads], y_pred.detach(), None, *effects)

    def _pass_two(self, loss, values, scope, batch: _PassInputs):
        """Replays the RNG state pass 1 started from (the same dropout
        mask)."""
        leaves = [value.detach().requires_grad_(True) for value in values]
        with torch.enable_grad(), _replay_rng(batch.rng), scope:
            scaled, value = loss(leaves)
        grads = torch.autograd.grad(scaled, leaves, allow_unused=True)
        return value.detach(), list(grads)
