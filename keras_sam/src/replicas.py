"""The data-parallel replicas a train step runs on, as one of them sees them.

TensorFlow's `tf.distribute` runs the step once per replica, and so does JAX
with `ascent="per_replica"` under `keras.distribution.DataParallel` (each
device's shard under `shard_map`). Otherwise JAX runs one program on global
arrays (its gradients are already global) and torch runs on one device, so
both see `ONE_REPLICA`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from keras import ops


def _identity(tensors: list) -> list:
    return list(tensors)


@dataclasses.dataclass(frozen=True)
class Replicas:
    """The replicas in sync, from inside one of them.

    Each replica computes its share of the global gradient: the gradient of
    its local mean loss divided by `count` (so that the shares sum to the
    global-batch gradient, which is what the base optimizer applies).

    Attributes:
        count: the number of replicas in sync.
        sum: all-reduces a list of tensors by summation over the replicas.
    """

    count: int = 1
    sum: Callable[[list], list] = _identity

    def all(self, flag):
        """A scalar boolean that is true on every replica if `flag` is."""
        if self.count == 1:
            return flag
        (false_count,) = self.sum([ops.cast(ops.logical_not(flag), "float32")])
        return ops.equal(false_count, 0.0)

    def own(self, shares: Sequence) -> list:
        """This replica's shares as the gradient of its own batch alone."""
        if self.count == 1:
            return list(shares)
        return [self.count * s for s in shares]

    def share(self, tensors: Sequence) -> list:
        """A global quantity as this replica's share of the sum."""
        if self.count == 1:
            return list(tensors)
        return [t / self.count for t in tensors]


ONE_REPLICA = Replicas()
