"""`SharpnessAwareMinimization`: tf-keras's SAM model, on Keras 3."""

from __future__ import annotations

from typing import Any

import keras

from keras_sam.src.model import SAMModel
from keras_sam.src.validation import check_int, check_real

# What a saved config holds besides the arguments (`keras.Model`'s own).
_LAYER_KEYWORDS = frozenset({"trainable", "dtype"})


@keras.saving.register_keras_serializable(package="keras_sam")
class SharpnessAwareMinimization(SAMModel):
    """tf-keras's `SharpnessAwareMinimization`, on Keras 3.

    A drop-in for `tf_keras.models.experimental.SharpnessAwareMinimization`
    (formerly `tf.keras.models.experimental.SharpnessAwareMinimization`):
    the same arguments, the same attributes (`model`, `rho`,
    `num_batch_splits`), and SAM's update, on the TensorFlow, JAX and
    PyTorch backends. It is a `SAMModel` with `method="sam"`, so everything
    a `SAMModel` does (the `sharpness` log, saving with its state, many
    devices, mixed precision) works here too.

    Each step computes the gradient `g` of the batch, perturbs the weights
    by `rho * g / ||g||` (the global L2 norm over the trainable variables)
    and applies the gradient taken at the perturbed weights. With
    `num_batch_splits`, each of that many equal micro-batches takes its own
    gradient, perturbation and perturbed gradient (m-sharpness).

    Two differences from tf-keras, both documented in "Migrating from
    tf.keras":

    - With `num_batch_splits`, the optimizer receives the mean of the
      micro-batches' gradients, where tf-keras passes their sum (a step
      `num_batch_splits` times larger with SGD). With SGD, a learning rate
      `num_batch_splits` times tf-keras's (and its weight decay and gradient
      clipping divided by `num_batch_splits`) reproduces its steps.
    - Both passes run the model with `training=True`; tf-keras runs the
      first without it. This changes only layers that behave differently in
      training (dropout, BatchNormalization).

    Args:
        model: the `keras.Model` (or layer) to train; `model` returns it.
        rho: the perturbation radius, a float >= 0. Defaults to `0.05`.
        num_batch_splits: the number of equal micro-batches each batch splits
            into, an int >= 1 (the batch size must be divisible by it), or
            `None` for no split. Defaults to `None`.
        name: the name of the model. Defaults to `None` (a unique name
            from the class name).
        **kwargs: `trainable` and `dtype`, as `keras.Model` takes them
            (a saved config holds them).

    Example:

    ```python
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    sam = keras_sam.SharpnessAwareMinimization(model, rho=0.05)
    sam.compile(optimizer="sgd", metrics=["accuracy"],
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
    sam.fit(x, y, epochs=5)
    sam.model.save("model.keras")   # the wrapped model, for inference
    ```

    References:
        Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
        Generalization", ICLR 2021.
    """

    # A batch that `num_batch_splits` does not divide: errors name it so.
    _batch_splits_option = "num_batch_splits"

    def __init__(
        self,
        model: keras.layers.Layer,
        rho: float = 0.05,
        num_batch_splits: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ):
        check_real("rho", rho, 0)
        if num_batch_splits is not None:
            check_int("num_batch_splits", num_batch_splits, 1)
        if name is not None and not isinstance(name, str):
            raise TypeError(
                f"`name` must be a string or None; received name={name!r}."
            )
        unknown = sorted(set(kwargs) - _LAYER_KEYWORDS)
        if unknown:
            raise TypeError(
                f"SharpnessAwareMinimization got unexpected keyword(s) "
                f"{unknown}: it takes tf-keras's arguments (`model`, `rho`, "
                "`num_batch_splits`, `name`). For SAM's other options and "
                "variants, use `keras_sam.SAMModel`."
            )
        super().__init__(
            model,
            method="sam",
            rho=float(rho),
            batch_splits=num_batch_splits or 1,
            name=name,
            **kwargs,
        )
        self._num_batch_splits = num_batch_splits

    @property
    def model(self) -> keras.layers.Layer:
        """The wrapped model (tf-keras's attribute; `inner` is the same)."""
        return self.inner

    @property
    def rho(self) -> float:
        """The perturbation radius."""
        return self.options.rho

    @property
    def num_batch_splits(self) -> int | None:
        """The number of micro-batches per batch, as given (`None`: no
        split)."""
        return self._num_batch_splits

    def get_config(self) -> dict:
        """The arguments, the wrapped model's config, and `keras.Model`'s
        `name`, `trainable` and `dtype`."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "model": keras.saving.serialize_keras_object(self.inner),
            "rho": self.rho,
            "num_batch_splits": self.num_batch_splits,
        }

    @classmethod
    def from_config(
        cls, config: dict, custom_objects=None
    ) -> SharpnessAwareMinimization:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
