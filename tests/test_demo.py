"""`make demo` (the README's first command), with tiny settings."""

import pytest

from keras_sam import demo


def test_demo_trains_and_prints_a_table_per_method(capsys):
    demo.main(["--methods", "sam,looksam", "--epochs", "2"])
    out = capsys.readouterr().out
    table = out[out.index("test acc") :].splitlines()[1:]
    names = [line.split()[0] for line in table]
    assert names == ["base", "sam", "looksam"]
    for line in table:
        accuracy, _, ratio = (float(v) for v in line.split()[1:])
        assert 0.5 < accuracy <= 1.0  # two epochs learn digits
        assert ratio > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "bogus"], "unknown methods ['bogus']"),
        (["--epochs", "1"], "--epochs must be >= 2"),
    ],
)
def test_demo_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        demo.main(argv)
    assert message in capsys.readouterr().err
