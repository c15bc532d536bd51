"""The `keras-sam` command: `keras-sam demo [options]`, `keras-sam flatness
[options]`."""

from __future__ import annotations

import argparse
import sys

COMMANDS = {
    "demo": "trains the example ViT on digits with several methods",
    "flatness": "measures how flat AdamW's and SAM's models of the demo are",
}


def main(argv: list[str] | None = None) -> None:
    """Runs a `keras-sam` sub-command with the arguments that follow it."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="keras-sam",
        description="keras-sam: Sharpness-Aware Minimization for Keras 3.",
        epilog="; ".join(f"{c}: {h}" for c, h in COMMANDS.items()),
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
