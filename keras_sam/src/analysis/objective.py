"""The loss of a model on data as a function of (some of) its weights.

Every measure evaluates `model.stateless_call(trainable, non_trainable, x,
training=False)`: the model's variables are never assigned, BatchNorm uses
its moving statistics (inference mode) and dropout is off, so measuring
changes nothing and gives the same number twice. The loss is the data loss
only (a `keras.losses.Loss`, or the loss the model was compiled with): the
model's regularization losses are not part of the landscape.

`cached_objective` makes the compiled functions (`autodiff/`) once per
model, loss, measured variables and HVP mode, and every measure reuses
them: a JAX or TensorFlow trace of a large model takes seconds.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from keras_sam.src.analysis import autodiff, vectors
from keras_sam.src.validation import check_choice, check_int

HVP_MODES = ("autodiff", "finite_difference")
# The finite-difference step, relative to 1 + ||w||, along a unit vector.
FINITE_DIFFERENCE_STEP = 1e-3


class Batch(NamedTuple):
    """One batch of data, as backend tensors."""

    x: Any
    y: Any
    sample_weight: Any
    size: int


class _FunctionLoss(keras.losses.Loss):
    """A loss function `fn(y_true, y_pred)`, averaged over the batch."""

    def __init__(self, fn):
        name = getattr(fn, "__name__", "")
        super().__init__(name=name if name.isidentifier() else "loss")
        self.fn = fn

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred)


def inner_model(model) -> keras.Model:
    """`model`, or the model a `SAMModel` wraps; it must be built."""
    from keras_sam.src.model import SAMModel

    if isinstance(model, SAMModel):
        model = model.inner
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            "`model` must be a keras.Model or a keras_sam.SAMModel; "
            f"received model={model!r}."
        )
    if not model.built or not model.trainable_variables:
        raise ValueError(
            "`model` must be built and have trainable variables: call it on "
            f"a batch first; received model={model.name!r} with "
            f"{len(model.trainable_variables)} trainable variables."
        )
    return model


def resolve_loss(model, loss=None) -> keras.losses.Loss:
    """`loss`, or the loss `model` (or the SAMModel) was compiled with."""
    if loss is None:
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "`loss` is needed: the model was not compiled with a loss. "
                "Pass one, e.g. loss=keras.losses."
                "SparseCategoricalCrossentropy(from_logits=True); received "
                "loss=None."
            )
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        return loss
    if callable(loss):
        return _FunctionLoss(loss)
    raise ValueError(
        "`loss` must be one loss (a keras.losses.Loss, a function or a "
        "name) for the model's single output; received "
        f"loss={loss!r}."
    )


def variable_indices(model: keras.Model, variables=None) -> list[int]:
    """The positions in `model.trainable_variables` of `variables` (a list
    of variables or a layer; `None`: all of them)."""
    trainable = model.trainable_variables
    if variables is None:
        return list(range(len(trainable)))
    if isinstance(variables, keras.layers.Layer):
        variables = variables.trainable_variables
    position = {id(v): i for i, v in enumerate(trainable)}
    unknown = [v for v in variables if id(v) not in position]
    if unknown or not variables:
        raise ValueError(
            "`variables` must be a non-empty list of the model's trainable "
            "variables, or a layer of the model that has some; received "
            f"variables={[getattr(v, 'path', v) for v in variables]}"
            + (f" ({unknown[0]!r} is not one)." if unknown else ".")
        )
    return [position[id(v)] for v in variables]


def _tensor(value):
    if value is None or ops.is_tensor(value):
        return value
    return ops.convert_to_tensor(np.asarray(value))


def _batch(x, y, sample_weight) -> Batch:
    if y is None:
        raise ValueError(
            "Every batch needs labels: `x` must yield `(x, y)` or `(x, y, "
            "sample_weight)` tuples when `y` is None."
        )
    x, y, sample_weight = keras.tree.map_structure(
        _tensor, (x, y, sample_weight)
    )
    return Batch(x, y, sample_weight, int(keras.tree.flatten(x)[0].shape[0]))


def _examples(x) -> int:
    return int(np.shape(keras.tree.flatten(x)[0])[0])


def make_batches(x, y=None, batch_size: int | None = None) -> list[Batch]:
    """The data as a list of batches.

    `x` and `y` are arrays (or `x` a dict or list of arrays), split into
    batches of `batch_size` (`None`: one batch); or `y` is `None` and `x`
    yields `(x, y)` or `(x, y, sample_weight)` batches (a `tf.data.Dataset`,
    a `torch.utils.data.DataLoader`, a list, ...), all held in memory.
    """
    if y is None:
        if isinstance(x, np.ndarray) or ops.is_tensor(x):
            raise ValueError(
                "`y` is needed when `x` is an array; received y=None."
            )
        batches = [
            _batch(*keras.utils.unpack_x_y_sample_weight(item)) for item in x
        ]
    else:
        n = _examples(x)
        if len(y) != n:
            raise ValueError(
                f"`x` and `y` must hold as many examples; received {n} "
                f"inputs and {len(y)} labels."
            )
        size = n if batch_size is None else batch_size
        check_int("batch_size", size, 1)
        batches = [
            _batch(
                keras.tree.map_structure(lambda a, i=i: a[i : i + size], x),
                y[i : i + size],
                None,
            )
            for i in range(0, n, size)
        ]
    if not batches:
        raise ValueError("`x` must hold at least one batch; it is empty.")
    return batches


def _loss_source(model, loss):
    return loss if loss is not None else getattr(model, "loss", None)


class Objective:
    """The data loss of a model on a batch, as a function of the values of
    some of its trainable variables (the others stay at their values).

    Args:
        model: a built `keras.Model`, or a `SAMModel` (its `inner` model).
        loss: the loss; `None`: the one `model` was compiled with.
        variables: the variables that vary (a list, or a layer); `None`: all
            the trainable variables.
        hvp: `"autodiff"` (forward-over-reverse) or `"finite_difference"`
            (central differences of two gradients).
    """

    def __init__(self, model, loss=None, variables=None, hvp="autodiff"):
        check_choice("hvp", hvp, HVP_MODES)
        inner = inner_model(model)
        # A weak reference: `cached_objective` keeps no model alive.
        self._model = weakref.ref(inner)
        self.loss_source = _loss_source(model, loss)
        self.loss = resolve_loss(model, loss)
        self.indices = variable_indices(inner, variables)
        self.hvp_mode = hvp
        self._functions = autodiff.compile_loss(self._loss)

    @property
    def model(self) -> keras.Model:
        return self._model()

    @property
    def variables(self) -> list:
        trainable = self.model.trainable_variables
        return [trainable[i] for i in self.indices]

    def values(self) -> list:
        """The current values of `variables`."""
        return autodiff.snapshot(self.variables)

    def _loss(self, values, context):
        trainable, non_trainable, x, y, sample_weight = context
        trainable = list(trainable)
        for i, value in zip(self.indices, values):
            trainable[i] = value
        y_pred, _ = self.model.stateless_call(
            trainable, non_trainable, x, training=False
        )
        loss = self.loss(y, y_pred, sample_weight)
        return ops.cast(loss, "float32")

    def contexts(self, batches, non_trainable=None) -> list[tuple]:
        """`(context, weight)` per batch: the model's other values now and
        the batch, and the batch's share of the examples."""
        trainable = autodiff.snapshot(self.model.trainable_variables)
        if non_trainable is None:
            non_trainable = autodiff.snapshot(
                self.model.non_trainable_variables
            )
        total = sum(b.size for b in batches)
        return [
            ((trainable, non_trainable, *b[:3]), b.size / total)
            for b in batches
        ]

    def value(self, values, context):
        return self._functions.value(values, context)

    def value_and_gradient(self, values, context):
        return self._functions.value_and_gradient(values, context)

    def hvp(self, values, vector, context) -> list:
        """The Hessian (with respect to `variables`) at `values` times
        `vector`, on one batch."""
        if self.hvp_mode == "autodiff":
            return self._functions.hvp(values, vector, context)
        length = vectors.norm(vector) + vectors.DELTA
        step = FINITE_DIFFERENCE_STEP * (1.0 + vectors.norm(values))
        shift = vectors.scaled(vector, step / length)
        _, plus = self.value_and_gradient(
            vectors.combine((1.0, values), (1.0, shift)), context
        )
        _, minus = self.value_and_gradient(
            vectors.combine((1.0, values), (-1.0, shift)), context
        )
        factor = length / (2.0 * step)
        return vectors.combine((factor, plus), (-factor, minus))

    def mean_value(self, values, contexts) -> float:
        """The loss over all the batches of `contexts`."""
        return sum(
            weight * vectors.scalar(self.value(values, context))
            for context, weight in contexts
        )

    def mean_hvp(self, values, vector, contexts) -> list:
        """The Hessian of the loss over all the batches times `vector`."""
        return vectors.combine(
            *(
                (weight, self.hvp(values, vector, context))
                for context, weight in contexts
            )
        )


# Per model: {(its trainable variables, those measured, hvp): Objective}.
_OBJECTIVES = weakref.WeakKeyDictionary()


def cached_objective(
    model, loss=None, variables=None, hvp="autodiff"
) -> Objective:
    """An `Objective`, made once for a model, a loss, its variables and an
    HVP mode, then reused with its compiled functions (a JAX or TensorFlow
    trace of a large model takes seconds)."""
    check_choice("hvp", hvp, HVP_MODES)
    inner = inner_model(model)
    key = (
        tuple(id(v) for v in inner.trainable_variables),
        tuple(variable_indices(inner, variables)),
        hvp,
    )
    source = _loss_source(model, loss)
    cache = _OBJECTIVES.setdefault(inner, {})
    cached = cache.get(key)
    if cached is None or not (
        cached.loss_source is source
        or (isinstance(source, str) and cached.loss_source == source)
    ):
        cached = cache[key] = Objective(model, loss, variables, hvp)
    return cached
