"""benchmarks/fidelity.py runs and prints its tables (tiny settings; the
measured numbers themselves are in docs/fidelity.md, never asserted)."""

from __future__ import annotations

import importlib.util
import pathlib
import types

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="the script's tables and verdicts do not depend on the backend; "
    "it runs here on JAX, where docs/fidelity.md measures it (its TensorFlow "
    "and PyTorch figures come from running it there), which keeps 30 s of "
    "TensorFlow and PyTorch time within the suite's budget",
)
PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/fidelity.py"
TINY = ["--epochs", "1", "--seeds", "1", "--depth", "1", "--train-size", "64"]


@pytest.fixture(scope="module")
def fidelity() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fidelity", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(out: str, first_column: str) -> list[list[str]]:
    """The cells of the rows of the table whose header starts with
    `first_column`."""
    lines = out.splitlines()
    start = lines.index(next(x for x in lines if x.startswith(first_column)))
    assert lines[start + 1].startswith("| --- |")
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        table.append([cell.strip() for cell in line.strip("|").split("|")])
    return table


def verdict(out: str, claim: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith("verdict ")]
    assert line.startswith(f"verdict {claim}: paper")
    return line


def shapes_only(build):
    """`build` with its model's variables created but not drawn: the
    counting claims read shapes only (drawing ViT-S/16's 22M initial values
    cost seconds)."""

    def built() -> keras.Model:
        with keras.StatelessScope(initialize_variables=False):
            return build()

    return built


def test_nusam_state(fidelity, capsys, monkeypatch) -> None:
    models = fidelity.NUSAM_MODELS
    monkeypatch.setitem(models, "ViT-S/16", shapes_only(models["ViT-S/16"]))
    fidelity.main(["nusam_state", "--models", "ViT-S/16"])
    out = capsys.readouterr().out
    (row,) = rows(out, "| model | params |")
    assert row[0] == "ViT-S/16"
    assert row[1] == "22.05M"  # the builder's ViT-S/16
    assert row[3] == "73"  # 12 x (q, k, v, out, mlp1, mlp2) + head
    assert row[-3:] == ["22M", "75k", "99.66%"]  # quoted from Table 1
    assert "ViT-S/16" in verdict(out, "nusam_state")


def test_samon_params(fidelity, capsys, monkeypatch) -> None:
    models = "example ViT,example ResNet"
    for name in models.split(","):
        shape, build, paper = fidelity.SAMON_MODELS[name]
        entry = (shape, shapes_only(build), paper)
        monkeypatch.setitem(fidelity.SAMON_MODELS, name, entry)
    fidelity.main(["samon_params", "--models", models])
    out = capsys.readouterr().out
    table = rows(out, "| model | shape |")
    assert [row[0] for row in table] == models.split(",")
    for row in table:
        assert row[5].endswith("%") and row[6] in ("yes", "no")
    assert "of 2 below 0.1%" in verdict(out, "samon_params")


def test_looksam(fidelity, capsys) -> None:
    fidelity.main(["looksam", *TINY, "--repeats", "1", "--alphas", "0.7"])
    out = capsys.readouterr().out
    table = rows(out, "| method |")
    assert [row[0] for row in table] == ["base", "sam", "looksam alpha 0.7"]
    for row in table:
        assert 0.0 <= float(row[1].split(" ± ")[0]) <= 100.0
        assert float(row[3].split()[0]) > 0  # the epoch-time ratio
    assert "looksam alpha 0.7 - SAM" in verdict(out, "looksam")


def test_fsam(fidelity, capsys, tmp_path) -> None:
    plot = tmp_path / "fsam.png"
    fidelity.main(["fsam", *TINY, "--rhos", "0.05", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert [row[0] for row in rows(out, "| method |")] == [
        "sam",
        "fsam",
        "F-SAM - SAM",
    ]
    line = verdict(out, "fsam")
    assert "best rho on the grid 0.05" in line
    assert line.endswith("no rho above 0.05 on the grid")
    assert plot.stat().st_size > 0


def test_fsam_report_pairs_the_differences_by_seed(fidelity, capsys) -> None:
    accuracy = {
        ("sam", 0.05): [0.96, 0.94],
        ("sam", 0.1): [0.95, 0.91],
        ("sam", 0.2): [0.75, 0.72],
        ("fsam", 0.05): [0.95, 0.97],
        ("fsam", 0.1): [0.96, 0.95],
        ("fsam", 0.2): [0.86, 0.88],
    }
    fidelity.fsam_report(accuracy)
    out = capsys.readouterr().out
    assert rows(out, "| method |") == [
        ["sam", "95.00 ± 1.41", "93.00 ± 2.83", "73.50 ± 2.12"],
        ["fsam", "96.00 ± 1.41", "95.50 ± 0.71", "87.00 ± 1.41"],
        [
            "F-SAM - SAM",
            "1.00 ± 2.83 pp (t 0.5, higher on 1/2)",
            "2.50 ± 2.12 pp (t 1.7, higher on 2/2)",
            "13.50 ± 3.54 pp (t 5.4, higher on 2/2)",
        ],
    ]
    # Drops from SAM's best rho (0.05) to each larger one.
    assert rows(out, "| rho |") == [
        [
            "0.05 -> 0.1 (2x)",
            "2.00 ± 1.41",
            "0.50 ± 2.12",
            "1.50 ± 0.71 pp (t 3.0, higher on 2/2)",
        ],
        [
            "0.05 -> 0.2 (4x)",
            "21.50 ± 0.71",
            "9.00 ± 0.00",
            "12.50 ± 0.71 pp (t 25.0, higher on 2/2)",
        ],
    ]
    assert verdict(out, "fsam").endswith(
        "SAM's best rho on the grid 0.05 (95.00 ± 1.41 %), F-SAM - SAM there "
        "1.00 ± 2.83 pp (t 0.5, higher on 1/2); drop 0.05 -> 0.1 (2x): SAM "
        "2.00 ± 1.41 pp, F-SAM 0.50 ± 2.12 pp, SAM - F-SAM 1.50 ± 0.71 pp "
        "(t 3.0, higher on 2/2); drop 0.05 -> 0.2 (4x): SAM 21.50 ± 0.71 pp, "
        "F-SAM 9.00 ± 0.00 pp, SAM - F-SAM 12.50 ± 0.71 pp (t 25.0, higher "
        "on 2/2)"
    )


def test_large_batch(fidelity, capsys, tmp_path) -> None:
    plot = tmp_path / "x.png"
    fidelity.main(["large_batch", "--quick", "--plot", str(plot)])
    out = capsys.readouterr().out
    table = rows(out, "| method | batch 16")
    assert [row[0] for row in table] == [
        "LAMB",
        "LAMB + SAM",
        "LAMB + LookSAM",
        "LAMB + Look-LayerSAM",
    ]
    for row in table:
        assert len(row) == 7  # name, 2 batch sizes, Table 2's 4
        assert 0.0 <= float(row[1].split(" ± ")[0]) <= 100.0
    assert table[0][3:] == ["74.6", "74.3", "74.4", "72.4"]  # Table 2
    gains = rows(out, "| difference")
    assert [row[0] for row in gains][-1] == "Look-LayerSAM - SAM"
    assert len(gains) == 4 and all(len(row) == 9 for row in gains)
    assert gains[0][4:] == ["+4.0", "+4.0", "+3.2", "+2.7", "-0.47"]
    assert "above SAM at" in verdict(out, "large_batch")
    assert "30% label noise" in verdict(out, "large_batch")  # the default
    assert "30% of the original training images with a wrong label" in out
    assert plot.exists()


def test_samon_accuracy(fidelity, capsys, tmp_path) -> None:
    plot = tmp_path / "samon.png"
    fidelity.main(["samon_accuracy", "--quick", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert [row[:2] for row in rows(out, "| method | rho |")] == [
        ["base", "-"],
        ["sam", "0.05 (best)"],  # the presets' rho
        ["samon", "1 (best)"],
    ]
    summary = rows(out, "| method | best rho |")
    assert [row[0] for row in summary] == ["base", "sam", "samon"]
    # --quick's ResNet: one stage of 8 filters, 1,362 parameters, of which
    # 48 in its 3 BatchNormalization layers (gamma, beta).
    assert [row[4] for row in summary] == [
        "0 / 1,362 (0.00%)",
        "1,362 / 1,362 (100.00%)",
        "48 / 1,362 (3.52%)",
    ]
    assert all(float(row[5].split()[0]) > 0 for row in summary)
    assert "SAM-ON - SAM" in verdict(out, "samon_accuracy")
    assert plot.stat().st_size > 0


def test_nusam_accuracy(fidelity, capsys, tmp_path) -> None:
    plot = tmp_path / "nusam.png"
    fidelity.main(["nusam_accuracy", "--quick", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert [row[:2] for row in rows(out, "| method | rho |")] == [
        ["base", "-"],
        ["sam", "0.05 (best)"],
        ["nusam", "0.1 (best)"],
    ]
    summary = rows(out, "| method | best rho |")
    assert [row[0] for row in summary] == ["base", "sam", "nusam"]
    memory = rows(out, "| method | trained ViT")
    assert [row[0] for row in memory] == ["base", "sam", "nusam"]
    assert memory[0][2] == "+0.00"  # the base against itself
    assert memory[1][3] == "0" and int(memory[2][3].replace(",", "")) > 0
    line = verdict(out, "nusam_accuracy")
    assert "nuSAM - SAM" in line and "trained ViT: SAM" in line
    assert plot.stat().st_size > 0
