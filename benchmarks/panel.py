"""Defaults chosen on a panel of tasks, by the worst case, and checked on
tasks that did not choose them.

A default fitted to one task moves others the other way, so each preset's
defaults are judged on several different label-noise tasks (30% of the
training labels replaced by wrong ones, where SAM is known to help; test
accuracy on clean labels), by the worst gap to `sam` over the panel. Every
task trains with AdamW (cosine decay from 2e-3, weight decay 0.01, batch 64,
30 epochs), as the demo does.

The panel (`CHOOSING`) chooses; the held-out tasks (`HELD_OUT`) only check:

- `vit`: the demo's ViT (2 blocks, dim 64) on scikit-learn's digits.
- `mixer`: an MLP-Mixer (2 blocks, dim 64) on the digits.
- `resnet`: a ResNet with BatchNormalization (widths 16, 32) on the digits.
- `text`: a keras-hub `BertBackbone` built from a config (2 layers, hidden
  32, random weights) classifying generated token sequences (4 classes).
- held out, `tabular`: an MLP (3 x 128, ReLU) on scikit-learn's generated
  `make_classification` data (20 features, 4 classes).
- held out, `vit_other`: another ViT (3 blocks, dim 48, 4x4 patches) on
  another split of the digits.

Each run is `METHOD [OPTION=VALUE ...]` (`base`: AdamW alone), as in
`label_noise.py`. Each result is appended to `--results` (JSON lines) as it
ends, and a run already there is not trained again, so an interrupted sweep
resumes and several processes (one per core) can share the work:

    KERAS_BACKEND=jax taskset -c 0 python benchmarks/panel.py --seeds 2 \\
        --tasks vit,mixer --results panel_a.jsonl base sam \\
        "asam rho=0.1" "asam rho=0.2" "asam rho=0.5"
    python benchmarks/panel.py --table panel_a.jsonl panel_b.jsonl \\
        --plot panel.png

The table gives each run's accuracy per task (mean ± std over the seeds),
its gap to `sam` per task in points, the worst gap over the choosing tasks
and over the held-out ones, and its worst regret over the choosing tasks:
how far it is below the best radius of the same method, task by task
(runs that differ only in `rho=` are one method). `--presets` runs every
preset with its defaults (`looklayersam` with LAMB, against LAMB alone, as
in `label_noise.py`).
Honours `KERAS_BACKEND`; a seed fixes the data, the label noise, the initial
weights and the batch order.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_sam.demo import noisy_digits as demo  # noqa: E402
from keras_sam.demo.models import mlp_mixer, resnet, vit  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from label_noise import every_preset, parse_run  # noqa: E402

NOISE = 0.3


@dataclasses.dataclass(frozen=True)
class Task:
    """A classifier and its data: `data(seed)`, `model(seed)` (newly built,
    uncompiled), and a line that describes it."""

    data: Callable[[int], demo.Data]
    model: Callable[[], keras.Model]
    description: str


def _digits(split_seed: int) -> Callable[[int], demo.Data]:
    def data(seed: int) -> demo.Data:
        (x, y), (x_test, y_test) = demo.load_digits(split_seed)
        noisy = demo.with_label_noise(y, NOISE, seed=seed)
        return demo.Data(x, noisy, x_test, y_test, y)

    return data


def _digits_model(build: Callable, **config) -> Callable[[], keras.Model]:
    common = dict(image_size=8, patch_size=2, channels=1, num_classes=10)
    return lambda: build(**{**common, **config})


def _with_noise(x, y, classes: int, seed: int, train: int) -> demo.Data:
    """The first `train` examples, with noisy labels; the rest, clean."""
    noisy = demo.with_label_noise(y[:train], NOISE, classes, seed)
    return demo.Data(x[:train], noisy, x[train:], y[train:], y[:train])


TEXT_CLASSES, TEXT_LENGTH, TEXT_VOCABULARY, TEXT_MARKERS = 4, 24, 64, 6


def text_data(seed: int) -> demo.Data:
    """Generated token sequences: each class owns `TEXT_MARKERS` marker
    tokens; a sequence holds 3 markers of its class and 2 of another among
    background tokens, so its class is the one whose markers occur most
    (1500 training and 500 test sequences; 0 is never drawn, the padding
    id)."""
    rng = np.random.default_rng(10_000 + seed)
    n = 2000
    background = 1 + TEXT_CLASSES * TEXT_MARKERS
    x = rng.integers(background, TEXT_VOCABULARY, (n, TEXT_LENGTH))
    y = rng.integers(0, TEXT_CLASSES, n)
    other = (y + rng.integers(1, TEXT_CLASSES, n)) % TEXT_CLASSES
    for i in range(n):
        places = rng.choice(TEXT_LENGTH, 5, replace=False)
        owners = [y[i]] * 3 + [other[i]] * 2
        x[i, places] = [
            1 + c * TEXT_MARKERS + rng.integers(TEXT_MARKERS) for c in owners
        ]
    return _with_noise(x.astype("int32"), y.astype("int32"), 4, seed, 1500)


def text_model() -> keras.Model:
    """A 2-layer `BertBackbone` (hidden 32, 2 heads) from a config, its
    pooled output into a linear head; token ids in, logits out."""
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=TEXT_VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=0.0,
        max_sequence_length=TEXT_LENGTH,
    )
    tokens = keras.Input((TEXT_LENGTH,), dtype="int32")
    features = backbone(
        {
            "token_ids": tokens,
            "segment_ids": keras.ops.zeros_like(tokens),
            "padding_mask": keras.ops.not_equal(tokens, 0),
        }
    )
    outputs = keras.layers.Dense(TEXT_CLASSES)(features["pooled_output"])
    return keras.Model(tokens, outputs, name="text")


def tabular_data(seed: int) -> demo.Data:
    """scikit-learn's `make_classification`: 2000 examples of 20 features
    (10 informative, 4 redundant), 4 classes of 2 clusters each,
    standardised; 1500 to train, 500 to test."""
    from sklearn.datasets import make_classification

    x, y = make_classification(
        2000, 20, n_informative=10, n_redundant=4, n_classes=4,
        n_clusters_per_class=2, random_state=20_000 + seed,
    )  # fmt: skip
    x = (x - x.mean(0)) / x.std(0)
    return _with_noise(x.astype("float32"), y.astype("int32"), 4, seed, 1500)


def tabular_model() -> keras.Model:
    """Three ReLU layers of 128 units and a linear head."""
    layers = [keras.layers.Dense(128, activation="relu") for _ in range(3)]
    return keras.Sequential(
        [keras.Input((20,)), *layers, keras.layers.Dense(4)], name="tabular"
    )


TASKS = {
    "vit": Task(
        _digits(0),
        _digits_model(vit, dim=64, depth=2, heads=4, mlp_dim=128),
        "the demo's ViT (2 blocks, dim 64) on the digits",
    ),
    "mixer": Task(
        _digits(0),
        _digits_model(mlp_mixer, dim=64, depth=2),
        "an MLP-Mixer (2 blocks, dim 64) on the digits",
    ),
    "resnet": Task(
        _digits(0),
        lambda: resnet((8, 8, 1), 10, widths=(16, 32)),
        "a ResNet with BatchNormalization (widths 16, 32) on the digits",
    ),
    "text": Task(
        text_data,
        text_model,
        "a keras-hub BertBackbone (2 layers, hidden 32) on generated tokens",
    ),
    "tabular": Task(
        tabular_data,
        tabular_model,
        "an MLP (3 x 128) on make_classification's 20 features",
    ),
    "vit_other": Task(
        _digits(1),
        _digits_model(vit, patch_size=4, dim=48, depth=3, heads=3, mlp_dim=96),
        "a ViT (3 blocks, dim 48, 4x4 patches) on another split",
    ),
}
CHOOSING = ("vit", "mixer", "resnet", "text")
HELD_OUT = ("tabular", "vit_other")


def train(task: str, run: str, seed: int) -> dict:
    """Trains `run` on `task` with `seed`; the numbers to keep."""
    method, optimizer, options = parse_run(run)
    keras.utils.set_random_seed(seed)
    result = demo.train(
        TASKS[task].data(seed),
        method,
        options,
        optimizer=optimizer,
        seed=seed,
        verbose=0,
        model=TASKS[task].model(),
    )
    return {
        "task": task,
        "run": run,
        "seed": seed,
        "backend": keras.backend.backend(),
        "accuracy": result["accuracy"],
        "train_noisy": result["train_noisy"],
        "step_seconds": result["step_seconds"],
    }


def load(paths) -> list[dict]:
    """Every result in the JSON-lines files that exist among `paths`."""
    results = []
    for path in map(pathlib.Path, paths):
        if path.exists():
            lines = path.read_text().splitlines()
            results += [json.loads(line) for line in lines if line.strip()]
    return results


def sweep(tasks, runs, seeds, path: pathlib.Path) -> None:
    """Trains every (seed, task, run) not yet in `path`, appending each
    result as it ends; a run whose method does not apply to the task's
    model (a `ValueError` at construction) is skipped."""
    backend = keras.backend.backend()
    done = {
        (r["task"], r["run"], r["seed"])
        for r in load([path])
        if r["backend"] == backend
    }
    for seed in seeds:
        for task in tasks:
            for run in runs:
                if (task, run, seed) in done:
                    continue
                try:
                    result = train(task, run, seed)
                except ValueError as error:
                    # A method that does not apply to the model (SAM-ON
                    # without normalization layers) is a clear error.
                    print(f"  {task} {run}: does not apply: {error}")
                    continue
                with path.open("a") as f:
                    f.write(json.dumps(result) + "\n")
                print(
                    f"  {task} seed {seed} {run}: {result['accuracy']:.3f}",
                    flush=True,
                )


def _accuracies(results: list[dict]) -> dict:
    """`{(task, run): [accuracy per seed, in seed order]}`."""
    table = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        table.setdefault((r["task"], r["run"]), []).append(r["accuracy"])
    return table


def _gap(acc: dict, task: str, run: str) -> float | None:
    """The run's mean accuracy minus `sam`'s on `task`, in points."""
    if (task, run) not in acc or (task, "sam") not in acc:
        return None
    mean = statistics.mean
    return 100 * (mean(acc[task, run]) - mean(acc[task, "sam"]))


def _worst(gaps) -> str:
    gaps = [g for g in gaps if g is not None]
    return f"{min(gaps):+.1f}" if gaps else "-"


def _family(run: str) -> str:
    """The run without its radius: the runs of one family differ only in
    `rho`."""
    return " ".join(w for w in run.split() if not w.startswith("rho="))


def _regret(acc: dict, task: str, run: str, runs: list) -> float | None:
    """How far the run's mean accuracy on `task` is below the best of its
    family's (its method at another radius), in points (`None` for a
    family of one)."""
    family = [r for r in runs if _family(r) == _family(run)]
    means = [statistics.mean(acc[task, r]) for r in family if (task, r) in acc]
    if len(means) < 2 or (task, run) not in acc:
        return None
    return 100 * (statistics.mean(acc[task, run]) - max(means))


def table(results: list[dict]) -> None:
    """Prints the Markdown table of every run on every task: accuracy
    (and gap to `sam`) per task, the worst gap to `sam` over the choosing
    and the held-out tasks, and the worst regret over the choosing ones
    (the gap to the best radius of the same method, task by task)."""
    acc = _accuracies(results)
    tasks = [t for t in TASKS if any(k[0] == t for k in acc)]
    runs = list(dict.fromkeys(r["run"] for r in results))
    head = " | ".join(f"`{t}`" for t in tasks)
    print(f"| run | {head} | worst, panel | worst, held out | regret |")
    print("| --- " * (len(tasks) + 4) + "|")
    for run in runs:
        cells = []
        for task in tasks:
            if (task, run) not in acc:
                cells.append("-")
                continue
            gap = _gap(acc, task, run)
            shown = "" if gap is None or run == "sam" else f" ({gap:+.1f})"
            cells.append(demo.mean_std(acc[task, run]) + shown)
        panel = _worst(_gap(acc, t, run) for t in CHOOSING if t in tasks)
        held = _worst(_gap(acc, t, run) for t in HELD_OUT if t in tasks)
        regret = _worst(
            _regret(acc, t, run, runs) for t in CHOOSING if t in tasks
        )
        print(
            f"| `{run}` | {' | '.join(cells)} | {panel} | {held} | {regret} |"
        )


def _radius(run: str) -> float | None:
    """The run's `rho=`, if it gives one."""
    return parse_run(run)[2].get("rho")


def plot(results: list[dict], path: str) -> None:
    """Test accuracy against the radius on the choosing tasks, one axis per
    method swept over at least three radii, one line per task (mean over
    the seeds; dotted: the task's `sam` at its default)."""
    demo._require("matplotlib")
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    from matplotlib import pyplot

    acc = _accuracies(results)
    runs = list(dict.fromkeys(r["run"] for r in results))
    families = {}
    for run in runs:
        if _radius(run) is not None:
            families.setdefault(_family(run), []).append(run)
    families = {f: rs for f, rs in families.items() if len(rs) >= 3}
    rows = -(-len(families) // 4)
    figure, axes = pyplot.subplots(
        rows, 4, figsize=(13, 3.2 * rows), sharey=True, squeeze=False
    )
    for axis in axes.flat[len(families) :]:
        axis.set_visible(False)
    for axis, (family, members) in zip(axes.flat, families.items()):
        for i, task in enumerate(t for t in CHOOSING if (t, "sam") in acc):
            points = sorted(
                (_radius(r), statistics.mean(acc[task, r]))
                for r in members
                if (task, r) in acc
            )
            color = f"C{i}"
            axis.plot(*zip(*points), "o-", color=color, label=task)
            axis.axhline(
                statistics.mean(acc[task, "sam"]), color=color, ls=":", lw=1
            )
        radii = sorted(_radius(r) for r in members)
        axis.set(xscale="log", xlabel="rho", title=family)
        axis.set_xticks(radii, [f"{r:g}" for r in radii])
        axis.minorticks_off()
        axis.yaxis.set_major_locator(matplotlib.ticker.MultipleLocator(0.1))
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("test accuracy")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="METHOD [K=V ...]")
    parser.add_argument("--presets", action="store_true")
    parser.add_argument("--tasks", default=",".join(CHOOSING))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--results", default="panel.jsonl")
    parser.add_argument(
        "--table", nargs="+", metavar="FILE", help="only print the table"
    )
    parser.add_argument(
        "--plot", metavar="PNG", help="with --table: accuracy against rho"
    )
    args = parser.parse_args(argv)
    if args.table:
        results = load(args.table)
        table(results)
        if args.plot:
            plot(results, args.plot)
        return
    runs = args.runs + (every_preset() if args.presets else [])
    tasks = args.tasks.split(",")
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown or not runs:
        parser.error(f"give runs; --tasks from {sorted(TASKS)}: {unknown}")
    print(
        f"== panel: {tasks}, seeds {args.first_seed}-"
        f"{args.first_seed + args.seeds - 1}, backend "
        f"{keras.backend.backend()}, keras {keras.__version__}, "
        f"{platform.machine()}",
        flush=True,
    )
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    path = pathlib.Path(args.results)
    sweep(tasks, runs, seeds, path)
    table(load([path]))


if __name__ == "__main__":
    main()
