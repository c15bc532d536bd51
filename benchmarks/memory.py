"""Peak memory of a training step: base optimizer vs SAM vs nuSAM.

Each (backend, method) runs in its own process: build the model (a wide MLP
of >= 50M parameters, or a ViT, whose attention kernels are EinsumDense),
compile with plain SGD (no optimizer state, so the SAM state and transients
stand out), take warm-up steps (tracing, compilation, first
allocations), reset the peak marks, run a few steps and read the peaks: the
process's peak RSS (`VmHWM`, after `/proc/self/clear_refs`) and, on a GPU,
the peak device memory (TensorFlow and torch reset it; JAX cannot, so its
device column is the peak since the process started). On the CPU the
"step" column is the step's own memory as JAX and TensorFlow account for
it, apart from the compiled program and the allocators' caches that the
RSS also holds (`_StepMemory`; on TensorFlow the median step). Each cell is the
median of `--repeats` processes (TensorFlow's executor runs ready ops in a
varying order, so its peak varies from run to run). The table reports each
method's extra peak over the base optimizer as a fraction of the parameter
bytes, and the step-time ratio nuSAM / SAM. Linux only.

    python benchmarks/memory.py                          # all backends
    python benchmarks/memory.py --backends jax           # one
    python benchmarks/memory.py --depth 16 --width 1792  # another MLP
    python benchmarks/memory.py --model vit              # the ViT
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time

METHODS = ("base", "sam", "nusam")


def _status(field: str) -> int:
    """A `/proc/self/status` field in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _model(kind: str, width: int, depth: int):
    import keras

    if kind == "vit":
        from keras_sam.demo.models import vit

        return vit(32, 4, 3, 10, dim=width, depth=depth, heads=width // 64)
    layers = [keras.Input((width,))]
    layers += [
        keras.layers.Dense(width, activation="relu") for _ in range(depth)
    ]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


class _DevicePeak:
    """The peak device memory on a GPU (bytes), else `None`."""

    def __init__(self):
        import keras

        self.backend = keras.backend.backend()
        self.gpu = _on_gpu(self.backend)

    def reset(self) -> None:
        if not self.gpu:
            return
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.backend == "tensorflow":
            import tensorflow as tf

            tf.config.experimental.reset_memory_stats("GPU:0")

    def peak(self) -> float | None:
        if not self.gpu:
            return None
        if self.backend == "torch":
            import torch

            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated())
        if self.backend == "tensorflow":
            import tensorflow as tf

            return float(
                tf.config.experimental.get_memory_info("GPU:0")["peak"]
            )
        import jax

        return float(jax.devices()[0].memory_stats()["peak_bytes_in_use"])


class _StepMemory:
    """The step's own memory as the backend accounts for it on the CPU,
    apart from what else the process holds (the compiled program, the
    allocators' caches): on JAX the compiled step's temporaries
    (`memory_analysis()`: the buffers a device would allocate for them),
    on TensorFlow its CPU allocator's peak during a step above the memory
    in use before it, the median over the steps (its executor runs ready
    operations in a varying order, so single steps of the same program
    vary by up to 0.4x the parameter bytes); `None` on torch (eager, so its
    RSS is the step's) and on a GPU (the device column)."""

    def __init__(self):
        import keras

        self.backend = keras.backend.backend()
        self.counted = not _on_gpu(self.backend) and self.backend != "torch"
        self.peaks = []

    def run(self, step) -> None:
        """Runs `step()`, counting its peak on TensorFlow."""
        if not (self.counted and self.backend == "tensorflow"):
            step()
            return
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        step()
        peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
        self.peaks.append(peak - before)

    def measure(self, trainer, x, y) -> float | None:
        if not self.counted:
            return None
        if self.backend == "tensorflow":
            return float(statistics.median(self.peaks))
        return compiled_step_temporaries(trainer, x, y)


def compiled_step_temporaries(trainer, x, y) -> float:
    """The bytes of the temporaries of `trainer`'s training step on the
    batch `(x, y)`, compiled by JAX as Keras does (the state donated):
    `memory_analysis().temp_size_in_bytes`, what a device allocates for
    the step beside its variables and inputs. JAX only; `trainer` is a
    compiled Keras model (a `SAMModel` or a plain one)."""
    import jax

    state = tuple(
        [v.value for v in variables]
        for variables in (
            trainer.trainable_variables,
            trainer.non_trainable_variables,
            trainer.optimizer.variables,
            trainer.metrics_variables,
        )
    )
    step = jax.jit(trainer.train_step, donate_argnums=0)
    analysis = step.lower(state, (x, y)).compile().memory_analysis()
    return float(analysis.temp_size_in_bytes)


def _on_gpu(backend: str) -> bool:
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _release_free_heap() -> None:
    """Returns glibc's free heap pages to the system: what the warm-up
    freed (compiling the step, on JAX and TensorFlow, leaves hundreds of MB
    of small freed blocks resident) must not count in the step's peak."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to release
        return
    libc.malloc_trim(0)


def worker(method: str, args) -> None:
    """Runs in a child process; prints one JSON line."""
    import keras
    import numpy as np

    from keras_sam import SAMModel

    model = _model(args.model, args.width, args.depth)
    trainer = model if method == "base" else SAMModel(model, method=method)
    trainer.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile={"auto": "auto", "true": True, "false": False}[
            args.jit_compile
        ],
    )
    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if args.model == "vit" else (args.width,)
    x = rng.normal(size=(args.batch, *shape)).astype("float32")
    y = rng.integers(0, 10, size=args.batch)
    for _ in range(args.warmup):  # tracing, compiling, first allocations
        trainer.train_on_batch(x, y)
    _release_free_heap()
    device = _DevicePeak()
    device.reset()
    step_memory = _StepMemory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS mark to the current RSS
    start = time.perf_counter()
    for _ in range(args.steps):
        step_memory.run(lambda: trainer.train_on_batch(x, y))
    seconds = (time.perf_counter() - start) / args.steps
    peak = _status("VmHWM")
    print(
        json.dumps(
            {
                "params": model.count_params(),
                "peak": peak,
                "device_peak": device.peak(),
                "step_memory": step_memory.measure(trainer, x, y),
                "step_seconds": seconds,
            }
        )
    )


def run(backend: str, method: str, args) -> dict:
    """The median peak and step time of `args.repeats` processes."""
    runs = [run_once(backend, method, args) for _ in range(args.repeats)]
    out = {
        key: statistics.median(r[key] for r in runs)
        for key in ("params", "peak", "step_seconds")
    }
    for key in ("device_peak", "step_memory"):
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    return out


def run_once(backend: str, method: str, args) -> dict:
    # A fixed mmap threshold: every large block is its own mapping, returned
    # to the system when freed, so the peak RSS is the peak of live memory
    # rather than of glibc's heap (whose threshold otherwise grows after
    # large frees, leaving freed blocks resident).
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="3",
        MALLOC_MMAP_THRESHOLD_="131072",
    )
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        *("--model", args.model, "--width", str(args.width)),
        *("--depth", str(args.depth), "--batch", str(args.batch)),
        *("--warmup", str(args.warmup), "--steps", str(args.steps)),
        *("--jit-compile", args.jit_compile),
    ]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{backend}/{method} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extra(r: dict, key: str, param_bytes: int) -> str:
    if r["base"][key] is None:
        return "-"
    return "/".join(
        f"{(r[m][key] - r['base'][key]) / param_bytes:.0%}"
        for m in ("sam", "nusam")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--model", choices=("mlp", "vit"), default="mlp")
    parser.add_argument(
        "--width", type=int, help="Defaults to 3584 (MLP) or 768 (ViT)."
    )
    parser.add_argument(
        "--depth", type=int, help="Defaults to 4 (MLP) or 6 (ViT)."
    )
    parser.add_argument(
        "--batch", type=int, help="Defaults to 64 (MLP) or 16 (ViT)."
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="steps before the peaks are reset: TensorFlow's RSS grows "
        "over its first steps",
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "true", "false"),
        default="auto",
        help="compile(jit_compile=...); 'auto' is Keras' default",
    )
    parser.add_argument("--worker", choices=METHODS)
    args = parser.parse_args()
    vit = args.model == "vit"
    args.width = args.width or (768 if vit else 3584)
    args.depth = args.depth or (6 if vit else 4)
    args.batch = args.batch or (16 if vit else 64)
    if args.worker:
        worker(args.worker, args)
        return
    print(
        f"{args.model} width {args.width} depth {args.depth}, batch "
        f"{args.batch}, SGD, jit_compile={args.jit_compile}; peaks over the "
        "steady-state steps, one process per cell; extra = SAM/nuSAM peak "
        "above the base optimizer's, as a share of the parameter bytes"
    )
    print(
        f"{'backend':<12}{'params':>8}{'base RSS':>10}{'RSS extra':>14}"
        f"{'step extra':>14}{'device extra':>14}{'nuSAM/SAM time':>16}"
    )
    for backend in args.backends.split(","):
        r = {m: run(backend, m, args) for m in METHODS}
        param_bytes = 4 * r["base"]["params"]
        print(
            f"{backend:<12}{r['base']['params'] / 1e6:>7.1f}M"
            f"{r['base']['peak'] / 2**20:>8.0f}MB"
            f"{_extra(r, 'peak', param_bytes):>14}"
            f"{_extra(r, 'step_memory', param_bytes):>14}"
            f"{_extra(r, 'device_peak', param_bytes):>14}"
            f"{r['nusam']['step_seconds'] / r['sam']['step_seconds']:>16.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
