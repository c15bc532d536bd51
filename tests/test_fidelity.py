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


def test_fsam(fidelity, capsys) -> None:
    fidelity.main(["fsam", *TINY, "--rhos", "0.05"])
    out = capsys.readouterr().out
    assert [row[0] for row in rows(out, "| method |")] == ["sam", "fsam"]
    line = verdict(out, "fsam")
    assert "best rho on the grid 0.05" in line
    assert "2 x 0.05 is not on the grid" in line


def test_fsam_report_pairs_the_drops_by_seed(fidelity, capsys) -> None:
    accuracy = {
        ("sam", 0.05): [0.96, 0.94],
        ("sam", 0.1): [0.95, 0.91],
        ("sam", 0.2): [0.75, 0.73],
        ("fsam", 0.05): [0.95, 0.95],
        ("fsam", 0.1): [0.95, 0.94],
        ("fsam", 0.2): [0.86, 0.88],
    }
    fidelity.fsam_report(accuracy)
    out = capsys.readouterr().out
    assert rows(out, "| method |") == [
        ["sam", "95.00 ± 1.41", "93.00 ± 2.83", "74.00 ± 1.41"],
        ["fsam", "95.00 ± 0.00", "94.50 ± 0.71", "87.00 ± 1.41"],
    ]
    assert rows(out, "| rho |") == [
        ["0.05 -> 0.1", "2.00 ± 1.41", "0.50 ± 0.71", "-1.50 ± 0.71"],
        ["0.1 -> 0.2", "19.00 ± 1.41", "7.50 ± 2.12", "-11.50 ± 0.71"],
    ]
    assert verdict(out, "fsam").endswith(
        "SAM's best rho on the grid 0.05 (95.00 ± 1.41 %); drop 0.05 -> 0.1: "
        "SAM 2.00 ± 1.41 pp, F-SAM 0.50 ± 0.71 pp, F-SAM - SAM -1.50 ± 0.71 "
        "pp over 2 seeds"
    )
