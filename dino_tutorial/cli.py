"""Command line for the trainer: every ``TrainConfig`` field is a ``--flag`` (underscores become dashes).

    python -m dino_tutorial.train --preset small --data-path DIR --output-dir DIR [--epochs N ...]

The preset gives the defaults; flags override them. Booleans take true/false.
"""
from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from typing import List, Optional

from .config import PRESETS, TrainConfig


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dino_tutorial.train",
                                     description="Train DINO (self-distillation with no labels) on ImageFolder data.")
    parser.add_argument("--preset", default="rn50_imagenet", help=f"one of {', '.join(PRESETS)}")
    hints = typing.get_type_hints(TrainConfig)
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        if hint is bool:
            parser.add_argument(flag, type=_parse_bool, metavar="BOOL")
        elif typing.get_origin(hint) is tuple:
            parser.add_argument(flag, type=float, nargs=2, metavar=("MIN", "MAX"))
        else:
            parser.add_argument(flag, type=hint)
    return parser


def parse_config(argv: Optional[List[str]] = None) -> TrainConfig:
    """A validated TrainConfig from command-line arguments; errors name the flag and the value."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset")
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in args.items() if v is not None}
    try:
        config = TrainConfig.from_preset(preset, **overrides)
        config.validate()
    except (ValueError, FileNotFoundError) as err:
        # One line, not argparse's usage dump: the flags were well formed, a value (a path, a range) is not.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return config
