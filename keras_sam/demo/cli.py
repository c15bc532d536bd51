"""The `keras-sam` command: `keras-sam demo [options]`, `keras-sam flatness
[options]`."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "demo": "trains the example ViT on digits with several methods",
    "flatness": "measures how flat AdamW's and SAM's models of the demo are",
}

BACKEND_NOTE = (
    "Backend: Keras chooses it as for any Keras program, KERAS_BACKEND "
    "(jax, tensorflow or torch) if set, else the backend in keras.json "
    "(in ~/.keras, or KERAS_HOME), else TensorFlow, Keras' default. `make "
    "demo` and "
    "`make flatness` run on JAX unless KERAS_BACKEND is set."
)


def command_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a sub-command: each option's help ends with its
    default, and the epilog says how the backend is chosen.

    Args:
        prog: the command as typed, `"keras-sam demo"` say.
        description: what the command does, one line.

    Returns:
        An `argparse.ArgumentParser` without options.
    """
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=BACKEND_NOTE,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def main(argv: list[str] | None = None) -> None:
    """Runs a `keras-sam` sub-command with the arguments that follow it."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description="keras-sam: Sharpness-Aware Minimization for Keras 3.",
        epilog="; ".join(f"{c}: {h}" for c, h in COMMANDS.items())
        + ". `keras-sam COMMAND --help` lists its options. "
        + BACKEND_NOTE,
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    command = parser.parse_args(argv[:1]).command
    if command == "flatness":
        from keras_sam.demo import flatness

        flatness.main(argv[1:])
        return
    from keras_sam.demo import noisy_digits

    noisy_digits.main(argv[1:])


if __name__ == "__main__":
    main()
