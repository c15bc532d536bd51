"""The SAM train step on PyTorch: `backward()` for pass 1; for pass 2,
`autograd.grad`, or `backward()` into pass 1's gradient buffers when nuSAM
perturbs the parameters in place and nothing reads the clean gradient
afterwards."""

from __future__ import annotations

import contextlib

import keras
import torch


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


def _add_rank_one(variables, rank_one, sign: float) -> None:
    """`variable += sign * eps_j` in place for every perturbed matrix, without
    a full-size temporary when the kernel's rows lead (Dense kernels and
    attention projections)."""
    for j, i in enumerate(rank_one.indices):
        weight, view = variables[i].value, rank_one.views[j]
        if view.rows_lead:
            weight.view(view.rows, view.cols).addr_(
                rank_one.u[j],
                rank_one.v[j],
                alpha=sign * float(rank_one.scales[j]),
            )
        else:
            weight.add_(rank_one.delta(j, sign))


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


def train_step(model, data):
    _check_single_process()
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    variables = model.trainable_variables
    plan = model._plan()
    state_variables = model.state_variables(plan)
    state_ids = {id(v) for v in keras.tree.flatten(state_variables)}
    # Torch assigns in place: snapshot the model's own state (BatchNorm
    # statistics, seeds) before pass 1; SAM's state is not touched until the
    # end of the step.
    non_trainable_before = [
        v.value if id(v) in state_ids else v.value.detach().clone()
        for v in model.non_trainable_variables
    ]

    rng = _rng_snapshot()

    # Pass 1, as keras.src.backend.torch.trainer does it.
    if model._call_has_training_arg:
        y_pred = model(x, training=True)
    else:
        y_pred = model(x)
    model.zero_grad()
    loss = model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    model._loss_tracker.update_state(
        loss,
        sample_weight=next(
            i for i in keras.tree.flatten(x) if i is not None
        ).shape[0],
    )
    clean = plan.clean_indices
    model.optimizer.scale_loss(loss).backward(
        inputs=[variables[i].value for i in clean]
    )
    grads = [None] * len(variables)
    for i in clean:
        grads[i] = variables[i].value.grad
    metrics_values = [v.value for v in model.metrics_variables]

    def perturbed_loss(values):
        """Pass 2's loss at `values`, and the same loss scaled."""
        with torch.enable_grad(), _replay_rng(rng):
            loss_2 = model.perturbed_loss(
                values,
                non_trainable_before,
                metrics_values,
                x,
                y,
                sample_weight,
            )
            return loss_2, model.optimizer.scale_loss(loss_2)

    def second_pass(values, rank_one):
        if rank_one is not None:  # nuSAM: perturb the parameters in place
            _add_rank_one(variables, rank_one, 1.0)
            if not plan.keeps_gradient:
                return _second_pass_into_grad_buffers(rank_one)
        leaves = [value.detach().requires_grad_(True) for value in values]
        loss_2, scaled = perturbed_loss(leaves)
        grads_2 = torch.autograd.grad(scaled, leaves, allow_unused=True)
        if rank_one is not None:
            _add_rank_one(variables, rank_one, -1.0)
        return loss_2.detach(), list(grads_2), values

    def _second_pass_into_grad_buffers(rank_one):
        """Pass 2 at the parameters (perturbed in place), its gradient
        written into pass 1's `.grad` buffers: no second gradient in memory.
        Variables outside the SAM gradient keep their pass-1 gradient."""
        inside = set(plan.gradient_indices)
        outside = {
            i: v.value.grad.clone()
            for i, v in enumerate(variables)
            if i not in inside and v.value.grad is not None
        }
        for i in plan.gradient_indices:
            if variables[i].value.grad is not None:
                variables[i].value.grad.zero_()
        loss_2, scaled = perturbed_loss([v.value for v in variables])
        scaled.backward()
        for i, grad in outside.items():
            variables[i].value.grad.copy_(grad)
        _add_rank_one(variables, rank_one, -1.0)
        values = [v.value.detach() for v in variables]
        return loss_2.detach(), [v.value.grad for v in variables], values

    with torch.no_grad():
        final, new_state, sharpness, ascent, _, skipped = (
            model.descent_gradients(
                plan,
                grads,
                [v.value.detach() for v in variables],
                keras.tree.map_structure(lambda v: v.value, state_variables),
                loss.detach(),
                second_pass,
                model.loss_scale(),
            )
        )
        model.optimizer.apply(final, variables)
        keras.tree.map_structure(
            lambda v, value: v.assign(value), state_variables, new_state
        )
    model._sharpness_tracker.update_state(sharpness, sample_weight=ascent)
    model._skipped_tracker.update_state(skipped)
    with model.logging_sharpness():
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
