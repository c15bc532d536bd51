"""Step time of SAMModel relative to the base optimizer, on one backend.

For each preset, the same ViT is trained with the base optimizer and with
`SAMModel(method=...)`; epochs of the two are timed interleaved in this one
process, and the script prints the median ratio (SAM epoch / base epoch) and,
on a GPU, the peak device memory of a SAM epoch relative to a base epoch.
The model is ViT-S/4-shaped (32 px, patch 4, width 384, 12 blocks, batch 256)
on a GPU and a reduced ViT on a CPU (`--size` overrides). Run it once per
backend:

    for b in tensorflow jax torch; do
        KERAS_BACKEND=$b python benchmarks/step_time.py
    done

`--batch-splits 1,2,4` times each method with each number of micro-batches
(m-sharpness, `SAMModel(batch_splits=...)`), against the same base.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam import PRESETS, SAMModel  # noqa: E402
from keras_sam.demo.models import vit  # noqa: E402

# (width, blocks, heads, batch) of the ViT on 32 px images with 4 px patches.
SIZES = {
    "vit-s4": (384, 12, 6, 256),  # ViT-S/4: 21.7M parameters
    "cpu": (128, 4, 4, 32),  # 0.8M parameters
    "tiny": (16, 1, 2, 4),  # the smoke test's
}
# Every ascent-only preset first, then the ones with reuse (k = 5).
DEFAULT_METHODS = (
    "sam",
    "samon",
    "asam",
    "fisher",
    "fsam",
    "layersam",
    "nusam",
    "looksam",
    "looklayersam",
    "samk",
)


def _device() -> str:
    """`"gpu"` when the backend computes on a GPU, else `"cpu"`."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "gpu" if jax.default_backend() == "gpu" else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


class PeakMemory:
    """The peak device memory of a block, on a GPU (TF and torch reset the
    peak; JAX's `peak_bytes_in_use` cannot be reset, so it gives none)."""

    def __init__(self, device: str):
        self.backend = keras.backend.backend()
        self.enabled = device == "gpu" and self.backend != "jax"

    def reset(self) -> None:
        if not self.enabled:
            return
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")

    def peak(self) -> float | None:
        """The peak in bytes since the last reset, or `None`."""
        if not self.enabled:
            return None
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated())
        import tensorflow as tf

        return float(tf.config.experimental.get_memory_info("GPU:0")["peak"])


def compiled(model: keras.Model) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def epoch(model, x, y, batch_size, memory: PeakMemory) -> tuple:
    """The seconds of one epoch, and its peak device memory (or `None`)."""
    memory.reset()
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    # `fit` returns once the last step's logs are on the host.
    return time.perf_counter() - start, memory.peak()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        help="the ViT's size. Defaults to vit-s4 on a GPU, cpu on a CPU.",
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--batch-splits",
        default="1",
        help="comma-separated numbers of micro-batches per batch",
    )
    args = parser.parse_args(argv)
    splits = [int(m) for m in args.batch_splits.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in PRESETS]
    if unknown:
        parser.error(
            f"unknown methods {unknown}; choose from {sorted(PRESETS)}"
        )

    device = _device()
    size = args.size or ("vit-s4" if device == "gpu" else "cpu")
    dim, depth, heads, batch_size = SIZES[size]

    def make_model():
        keras.utils.set_random_seed(0)
        return vit(32, 4, 3, 10, dim=dim, depth=depth, heads=heads)

    rng = np.random.default_rng(0)
    x = rng.random((args.steps * batch_size, 32, 32, 3), dtype="float32")
    y = rng.integers(0, 10, size=len(x))
    memory = PeakMemory(device)
    base = compiled(make_model())
    print(
        f"backend={keras.backend.backend()} device={device} "
        f"machine={platform.machine()} cpus={os.cpu_count()} "
        f"model=ViT {size} (32px/4, width {dim}, {depth} blocks, {heads} "
        f"heads, {base.count_params() / 1e6:.2f}M params) batch={batch_size} "
        f"steps/epoch={args.steps} repeats={args.repeats} optimizer=AdamW"
    )
    header = f"{'method':<18}{'time ratio (median)':>21}{'min':>7}{'max':>7}"
    print(header + (f"{'peak memory ratio':>19}" if memory.enabled else ""))
    for method, m in [(method, m) for method in methods for m in splits]:
        sam = compiled(SAMModel(make_model(), method=method, batch_splits=m))
        label = method if splits == [1] else f"{method} splits={m}"
        for model in (base, sam):  # compile and warm up
            epoch(model, x, y, batch_size, memory)
        ratios, memories = [], []
        for _ in range(args.repeats):
            t_base, m_base = epoch(base, x, y, batch_size, memory)
            t_sam, m_sam = epoch(sam, x, y, batch_size, memory)
            ratios.append(t_sam / t_base)
            if memory.enabled:
                memories.append(m_sam / m_base)
        line = (
            f"{label:<18}{statistics.median(ratios):>21.2f}"
            f"{min(ratios):>7.2f}{max(ratios):>7.2f}"
        )
        if memory.enabled:
            line += f"{statistics.median(memories):>19.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
