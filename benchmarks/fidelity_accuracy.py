"""The accuracy claims of SAM-ON and nuSAM against SAM, at small scale.

Two sub-commands of benchmarks/fidelity.py (not in its `all`):

    python benchmarks/fidelity.py samon_accuracy  # SAM-ON vs SAM, ResNet
    python benchmarks/fidelity.py nusam_accuracy  # nuSAM vs SAM, ViT, memory

Each trains the base optimizer, SAM at a sweep of rho and the other method
at its own sweep on scikit-learn's digits over several seeds (each seed: the
same initial weights and batch order for every run), and compares the two
methods each at its best rho, paired per seed: `samon_accuracy` with the
example ResNet (BatchNormalization) and SGD with momentum, as the SAM-ON
paper trains its ResNets, beside the share of the parameters SAM-ON perturbs
and its epoch time; `nusam_accuracy` with the small ViT and AdamW, as the
nuSAM paper trains its ViTs, beside the memory of each method's training
step (on JAX: its compiled temporaries).
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
from collections.abc import Sequence

import keras
import numpy as np
from fidelity_common import (
    Trainer,
    adamw,
    bands,
    count,
    difference,
    digits,
    epoch_ratios,
    header,
    mean_std,
    paired,
    per_seed,
    pm,
    signed,
    small_vit,
    spread,
    table,
    trained,
    training_setup,
)
from memory import compiled_step_temporaries

from keras_sam import PRESETS
from keras_sam.demo.models import resnet

# method -> rho -> test accuracy per seed.
Sweep = dict[str, dict[float, list[float]]]
LABELS = {"sam": "SAM", "samon": "SAM-ON", "nusam": "nuSAM"}

# step memory: model -> method -> (compiled step temporaries in bytes, their
# excess over AdamW's as a multiple of the parameter bytes).
Memory = dict[str, dict[str, tuple[float, float]]]

# SAM-ON paper, Table 1 (CIFAR-100, basic augmentation, 3 seeds), the SAM
# rows: RN-56 / ResNeXt-29 / WRN-28-10. rho (Table 7): 0.1 all, 1.0 ON.
SAMON_TABLE_1 = {
    "base": "72.82 / 80.16 / 80.71",
    "sam": "75.07 / 81.79 / 83.11 (rho 0.1)",
    "samon": "75.58 / 82.22 / 84.19 (rho 1.0)",
}
# nuSAM paper, ViT-S/4 trained from scratch: Table 2 (CIFAR-10, CIFAR-100)
# and Table 3 (the same without AutoAugment).
NUSAM_TABLES_2_3 = {
    "base": "93.37 / 68.17 / 88.49 / 61.22",
    "sam": "94.21 / 71.71 / 89.90 / 65.11",
    "nusam": "94.39 / 70.60 / 90.42 / 65.29",
}
# nuSAM paper, Table 1: the perturbation's memory (left: ViT-S/16, 75k
# values for nuSAM against 22M; right: with AdamW, 4 model sizes instead of
# SAM's 5, a saving of 1/5).
NUSAM_TABLE_1 = {"base": "0 (4 in all)", "sam": "+1", "nusam": "+0.003"}


# ---- The sweep --------------------------------------------------------------


def grid(text: str) -> list[float]:
    return sorted(float(r) for r in text.split(","))


def run_sweep(
    grids: dict[str, Sequence[float]],
    args: argparse.Namespace,
    data: tuple,
    **model,
) -> tuple[list[float], Sweep, dict]:
    """The base optimizer's accuracies per seed, each method's at each rho
    of its grid, and the trainers by run (`"base"` or `(method, rho)`;
    `model`: `trained`'s `build` and `optimizer`)."""
    names = {
        (m, r): f"{m} rho {r:g}" for m, rhos in grids.items() for r in rhos
    }
    specs = [("base", None, {})] + [
        (name, method, {"rho": rho}) for (method, rho), name in names.items()
    ]
    results, trainers = trained(specs, args, data, keep=True, **model)
    print(per_seed(results))
    sweep = {m: {} for m in grids}
    for (method, rho), name in names.items():
        sweep[method][rho] = results[name]
    return results["base"], sweep, dict(zip(["base", *names], trainers))


def best_rho(per_rho: dict[float, list[float]]) -> float:
    """The rho of the highest mean accuracy (chosen on the test accuracies:
    the digits have no validation split)."""
    return max(per_rho, key=lambda rho: statistics.fmean(per_rho[rho]))


def chosen(trainers: dict, sweep: Sweep) -> dict[str, Trainer]:
    """The base optimizer's trainer and each method's at its best rho."""
    return {"base": trainers["base"]} | {
        m: trainers[m, best_rho(per_rho)] for m, per_rho in sweep.items()
    }


def sweep_table(base: list[float], sweep: Sweep) -> None:
    """Each run's accuracy, and its difference to the base optimizer."""
    rows = [("base", "-", pm(base), f"{100 * min(base):.2f}", "-")]
    for method, per_rho in sweep.items():
        best = best_rho(per_rho)
        for rho, values in sorted(per_rho.items()):
            rows.append(
                (
                    method,
                    f"{rho:g}" + (" (best)" if rho == best else ""),
                    pm(values),
                    f"{100 * min(values):.2f}",
                    signed(difference(values, base)),
                )
            )
    table(
        (
            "method",
            "rho",
            f"test accuracy % (mean ± std, {len(base)} seeds)",
            "worst seed %",
            "- base (pp, paired)",
        ),
        rows,
    )


# The first columns of each summary table (`leading_cells`).
LEADING_COLUMNS = (
    "method",
    "best rho",
    "test accuracy % (mean ± std)",
    "- SAM at its best rho (pp, paired)",
)


def leading_cells(method: str, base: list[float], sweep: Sweep) -> tuple:
    """A summary row's first cells: the method, its best rho, its accuracy
    there and its difference to SAM at SAM's best rho, per seed."""
    if method not in sweep:
        return method, "-", pm(base), "-"
    rho = best_rho(sweep[method])
    values = sweep[method][rho]
    gap = difference(values, best(sweep, "sam"))
    return method, f"{rho:g}", pm(values), signed(gap)


def best(sweep: Sweep, method: str) -> list[float]:
    """`method`'s accuracies per seed at its best rho."""
    return sweep[method][best_rho(sweep[method])]


def versus_sam(sweep: Sweep, method: str) -> str:
    """`method` at its best rho against SAM at its own, paired per seed."""
    sam, other = best_rho(sweep["sam"]), best_rho(sweep[method])
    return (
        f"{LABELS[method]} at its best rho {other:g} "
        f"{pm(sweep[method][other])} % vs SAM at {sam:g} "
        f"{pm(sweep['sam'][sam])} %: {LABELS[method]} - SAM "
        f"{paired(sweep[method][other], sweep['sam'][sam])}"
    )


# ---- SAM-ON ------------------------------------------------------------------


def sgd(args: argparse.Namespace, steps_per_epoch: int) -> keras.Optimizer:
    """SGD with momentum 0.9 and weight decay, the learning rate decayed by
    a cosine to 0 over the run (the SAM-ON paper's ResNet recipe)."""
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr, args.epochs * steps_per_epoch
    )
    return keras.optimizers.SGD(
        schedule, momentum=0.9, weight_decay=args.weight_decay
    )


def samon_setup(args: argparse.Namespace, train_size: int) -> str:
    return (
        f"digits 8x8 ({train_size} train / 360 test), resnet((8, 8, 1), 10, "
        f"widths={args.widths}) (BatchNormalization), SGD momentum 0.9 lr "
        f"{args.lr} cosine to 0, weight decay {args.weight_decay}, batch "
        f"{args.batch_size}, {args.epochs} epochs, seeds 0-{args.seeds - 1}; "
        f"rho: SAM {args.sam_rhos}, SAM-ON {args.samon_rhos} (method "
        "'samon': SAM's l2 ascent on the normalization parameters only)"
    )


def samon_accuracy(args: argparse.Namespace) -> None:
    header("samon_accuracy")
    if args.quick:
        quick(args, ("sam", "samon"))
        args.widths = "8"
    grids = {"sam": grid(args.sam_rhos), "samon": grid(args.samon_rhos)}
    data = digits(args.train_size)
    (x, y), _ = data
    print(f"setup: {samon_setup(args, len(x))}")
    widths = tuple(int(w) for w in args.widths.split(","))
    build = functools.partial(resnet, (8, 8, 1), 10, widths)
    base, sweep, trainers = run_sweep(
        grids, args, data, build=build, optimizer=sgd
    )
    sweep_table(base, sweep)
    timed = chosen(trainers, sweep)
    by_name = epoch_ratios(list(timed.values()), x, y, args.repeats)
    ratios = {m: by_name[t.name] for m, t in timed.items()}
    shares = {m: perturbed_share(t) for m, t in timed.items()}
    samon_summary(base, sweep, shares, ratios, args.repeats)
    print(samon_verdict(base, sweep, shares, ratios))
    plot_samon(base, sweep, args.plot)


def perturbed_share(trainer: Trainer) -> tuple[int, int]:
    """The values a method perturbs and the trainable values (0 perturbed
    for the base optimizer)."""
    trainable = count(trainer.model.trainable_variables)
    if trainer.model is trainer.inner:
        return 0, trainable
    return count(trainer.model.perturbed_variables), trainable


def samon_summary(
    base: list[float],
    sweep: Sweep,
    shares: dict[str, tuple[int, int]],
    ratios: dict[str, list[float]],
    repeats: int,
) -> None:
    rows = []
    for method in ("base", *sweep):
        perturbed, trainable = shares[method]
        rows.append(
            (
                *leading_cells(method, base, sweep),
                f"{perturbed:,} / {trainable:,} ({perturbed / trainable:.2%})",
                spread(ratios[method]),
                SAMON_TABLE_1[method],
            )
        )
    table(
        (
            *LEADING_COLUMNS,
            "perturbed / trainable parameters",
            f"epoch time / base (median, min-max of {repeats})",
            "paper Table 1: RN-56 / RNxT / WRN-28 (CIFAR-100)",
        ),
        rows,
    )


def samon_verdict(
    base: list[float],
    sweep: Sweep,
    shares: dict[str, tuple[int, int]],
    ratios: dict[str, list[float]],
) -> str:
    perturbed, trainable = shares["samon"]
    return (
        "verdict samon_accuracy: paper (Table 1, CIFAR-100, SGD, 3 seeds, "
        "SAM at rho 0.1, SAM-ON at rho 1.0): SAM-ON above SAM on RN-56 75.58 "
        "vs 75.07, ResNeXt 82.22 vs 81.79, WRN-28 84.19 vs 83.11 (basic "
        "augmentation; 2 of 3 with AutoAugment), perturbing < 0.1% of the "
        f"parameters; measured: {versus_sam(sweep, 'samon')}, perturbing "
        f"{perturbed / trainable:.2%} of the parameters, at "
        f"{statistics.median(ratios['samon']):.2f}x the base epoch (SAM "
        f"{statistics.median(ratios['sam']):.2f}x); SGD alone {pm(base)} %"
    )


# ---- nuSAM -------------------------------------------------------------------


def step_memory(
    trainers: dict[str, Trainer], x, y
) -> dict[str, tuple[float, float]]:
    """Each trainer's compiled step temporaries on the batch `(x, y)`
    (bytes), and their excess over the base optimizer's (`"base"`) as a
    multiple of the parameter bytes."""
    temporaries = {
        method: compiled_step_temporaries(trainer.model, x, y)
        for method, trainer in trainers.items()
    }
    param_bytes = 4 * trainers["base"].inner.count_params()
    return {
        method: (size, (size - temporaries["base"]) / param_bytes)
        for method, size in temporaries.items()
    }


def measured_memory(
    args: argparse.Namespace, models: dict[str, Trainer], x, y
) -> Memory:
    """The step memory of the trained models, and of the ViT widened to
    `--memory-dim` (compiled, not trained), on one training batch; none
    off JAX."""
    if keras.backend.backend() != "jax":
        return {}
    batch = x[: args.batch_size], y[: args.batch_size]
    memory = {"trained ViT": step_memory(models, *batch)}
    if args.memory_dim:
        build = functools.partial(small_vit, args.depth, args.memory_dim)
        steps_per_epoch = math.ceil(len(x) / args.batch_size)
        wide = {
            method: Trainer(
                method,
                build,
                adamw(args, steps_per_epoch),
                args.batch_size,
                None if method == "base" else method,
            )
            for method in models
        }
        memory[f"dim {args.memory_dim} ViT"] = step_memory(wide, *batch)
    return memory


def nusam_accuracy(args: argparse.Namespace) -> None:
    header("nusam_accuracy")
    if args.quick:
        quick(args, ("sam", "nusam"))
        args.depth, args.memory_dim = 1, 0
    grids = {"sam": grid(args.sam_rhos), "nusam": grid(args.nusam_rhos)}
    data = digits(args.train_size)
    (x, y), _ = data
    wide = f", also of the ViT at dim {args.memory_dim} (untrained)"
    print(
        f"setup: {training_setup(args, len(x))}; rho: SAM {args.sam_rhos} "
        f"(global), nuSAM {args.nusam_rhos} (per weight matrix), 1 power "
        "iteration; step memory on one training batch"
        + (wide if args.memory_dim else "")
    )
    base, sweep, trainers = run_sweep(grids, args, data)
    sweep_table(base, sweep)
    table(
        (*LEADING_COLUMNS, "paper ViT-S/4: C10 / C100 (Table 2), no AA (3)"),
        [
            (*leading_cells(m, base, sweep), NUSAM_TABLES_2_3[m])
            for m in ("base", *sweep)
        ],
    )
    models = chosen(trainers, sweep)
    memory = measured_memory(args, models, x, y)
    memory_table(memory, models)
    print(nusam_verdict(sweep, memory))
    plot_nusam(base, sweep, memory, args.plot)


def memory_table(memory: Memory, models: dict[str, Trainer]) -> None:
    rows = []
    for method, trainer in models.items():
        sam = trainer.model is not trainer.inner
        rows.append(
            (
                method,
                *(
                    cell
                    for per in memory.values()
                    for cell in (
                        f"{per[method][0] / 1024:,.0f}",
                        f"{per[method][1]:+.2f}",
                    )
                ),
                f"{trainer.model.perturbation_state_size() if sam else 0:,}",
                NUSAM_TABLE_1[method],
            )
        )
    table(
        (
            "method",
            *(
                column
                for model in memory
                for column in (
                    f"{model}: step temporaries (KiB)",
                    f"{model}: extra over AdamW (x parameter bytes)",
                )
            ),
            "persistent state (values, trained ViT)",
            "paper Table 1: extra (model sizes)",
        ),
        rows,
    )


def nusam_verdict(sweep: Sweep, memory: Memory) -> str:
    extras = "; ".join(
        f"{model}: SAM {per['sam'][1]:+.2f}x, nuSAM {per['nusam'][1]:+.2f}x"
        for model, per in memory.items()
    )
    return (
        "verdict nusam_accuracy: paper (Tables 2-3, ViTs from scratch on "
        "CIFAR, AdamW, rho swept per method): nuSAM - SAM -1.11 to +0.52 pp "
        "on the ViT rows (ViT-S/4 CIFAR-10 94.39 vs 94.21), with almost no "
        "memory for the perturbation (Table 1: 75k values instead of 22M "
        "for ViT-S/16; with AdamW 4 model sizes instead of SAM's 5); "
        f"measured: {versus_sam(sweep, 'nusam')}; step temporaries above "
        "AdamW's, in parameter bytes: " + (extras or "not measured off JAX")
    )


# ---- Plots -------------------------------------------------------------------


def rho_panel(ax, base: list[float], sweep: Sweep, xlabel: str) -> None:
    """Test accuracy against rho (log axis), per method, mean ± std over
    the seeds as a band; the base optimizer's as a horizontal band."""
    mean, std = mean_std(base)
    std = 0.0 if np.isnan(std) else std
    ax.axhline(100 * mean, color="C0", ls="--", lw=1, label="base optimizer")
    ax.axhspan(100 * (mean - std), 100 * (mean + std), color="C0", alpha=0.1)
    bands(ax, {LABELS[m]: per_rho for m, per_rho in sweep.items()}, color=1)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy % (360 digits)")
    ax.legend(fontsize=8)


def figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, panels, figsize=(6 + 4.5 * (panels - 1), 4.5))


def save(fig, title: str, path: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}")


def plot_samon(base: list[float], sweep: Sweep, path: str) -> None:
    fig, ax = figure(1)
    rho_panel(ax, base, sweep, "rho (SAM: all parameters; SAM-ON: norm only)")
    save(fig, "SAM-ON vs SAM: example ResNet on digits, SGD", path)


def plot_nusam(
    base: list[float], sweep: Sweep, memory: Memory, path: str
) -> None:
    fig, axes = figure(2 if memory else 1)
    left = axes[0] if memory else axes
    rho_panel(left, base, sweep, "rho (SAM: global; nuSAM: per weight matrix)")
    if memory:
        memory_panel(axes[1], memory, list(sweep))
    save(fig, "nuSAM vs SAM: small ViT on digits, AdamW", path)


def memory_panel(ax, memory: Memory, methods: list[str]) -> None:
    """Each method's step temporaries above AdamW's, per model, in
    parameter bytes; the size of SAM's perturbation (1) dashed."""
    positions = np.arange(len(memory))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods, start=1):
        ax.bar(
            positions + (i - 1) * width,
            [per[method][1] for per in memory.values()],
            width,
            color=f"C{i}",
            label=LABELS[method],
        )
    ax.axhline(0.0, color="C0", lw=1)
    ax.axhline(1.0, color="k", lw=1, ls=":", label="one copy of the weights")
    ax.set_xticks(positions + width * (len(methods) - 1) / 2, list(memory))
    ax.set_ylabel("step temporaries above AdamW (x parameter bytes)")
    ax.legend(fontsize=8)


# ---- Command line ------------------------------------------------------------


def quick(args: argparse.Namespace, methods: Sequence[str]) -> None:
    """Tiny settings, for the tests: 64 training images, 1 epoch, 1 seed,
    1 timed epoch, each method at its preset's rho (the callers also
    shrink the model, and nuSAM's measures the trained ViT's memory
    only)."""
    args.train_size, args.epochs, args.seeds, args.repeats = 64, 1, 1, 1
    for method in methods:
        setattr(args, f"{method}_rhos", str(PRESETS[method].values["rho"]))


def training_arguments(sub: argparse.ArgumentParser, **defaults) -> None:
    """The flags both sub-commands share (`defaults`: theirs)."""
    sub.add_argument("--epochs", type=int, default=defaults["epochs"])
    sub.add_argument("--seeds", type=int, default=3)
    sub.add_argument("--batch-size", type=int, default=32)
    sub.add_argument("--lr", type=float, default=defaults["lr"])
    sub.add_argument(
        "--weight-decay", type=float, default=defaults["weight_decay"]
    )
    sub.add_argument(
        "--train-size",
        type=int,
        default=defaults["train_size"],
        help="train on the first N of the 1437 training images",
    )
    sub.add_argument(
        "--run-eagerly", action="store_true", help="no compiled step"
    )
    sub.add_argument(
        "--quick", action="store_true", help="tiny settings (the tests)"
    )
    sub.add_argument(
        "--plot", default=defaults["plot"], help="where to write the figure"
    )


def add_samon_arguments(sub: argparse.ArgumentParser) -> None:
    """The `samon_accuracy` sub-command's flags."""
    training_arguments(
        sub,
        epochs=15,
        lr=0.1,
        weight_decay=5e-4,
        train_size=300,
        plot="docs/images/fidelity_samon.png",
    )
    sub.add_argument("--sam-rhos", default="0.05,0.1,0.2,0.5")
    sub.add_argument("--samon-rhos", default="0.25,0.5,1,2")
    sub.add_argument(
        "--widths", default="16,32", help="the ResNet's stage widths"
    )
    sub.add_argument(
        "--repeats", type=int, default=7, help="timed epochs per method"
    )


def add_nusam_arguments(sub: argparse.ArgumentParser) -> None:
    """The `nusam_accuracy` sub-command's flags."""
    training_arguments(
        sub,
        epochs=10,
        lr=1e-3,
        weight_decay=0.05,
        train_size=None,
        plot="docs/images/fidelity_nusam.png",
    )
    sub.add_argument("--sam-rhos", default="0.025,0.05,0.1")
    sub.add_argument("--nusam-rhos", default="0.01,0.02,0.05")
    sub.add_argument("--depth", type=int, default=2, help="ViT blocks")
    sub.add_argument(
        "--warmup", type=int, default=0, help="AdamW warmup epochs"
    )
    sub.add_argument(
        "--clipnorm", type=float, default=0.0, help="0: no clipping"
    )
    sub.add_argument(
        "--memory-dim",
        type=int,
        default=512,
        help="also measure the step memory of the ViT at this width "
        "(compiled, not trained: the parameters outweigh the activations "
        "there, as in the paper's ViTs); 0: only the trained ViT",
    )
