"""The ``minedet`` command.

Each subcommand group lives in its own module with a ``register(subparsers)`` function that adds
its parsers and sets ``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an
exit status). A :class:`~minedet.errors.MinedetError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from minedet import __version__
from minedet.errors import MinedetError

# module name under minedet.cli -> the commands it registers, in --help order. A command's parser is
# built from its own module only, so a command imports what it uses and no more (``minedet predict
# model.onnx`` never imports torch; tests pin this table to what the modules register)
_GROUPS = {"demo": ("demo",), "data": ("data",), "train": ("train",), "infer": ("eval", "predict"), "mine": ("mine",),
           "export": ("export",)}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``minedet`` parser: every command's, or only ``command``'s when it is one (faster, lighter)."""
    parser = argparse.ArgumentParser(
        prog="minedet",
        description=(
            "Train object detectors from incomplete box annotations and mine the boxes nobody labelled. "
            "Methods: supervised baselines, Co-mining (sparse labels), Mean Teacher / ACRST (semi-supervised)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'minedet COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"minedet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups = [g for g, cmds in _GROUPS.items() if command in cmds] or list(_GROUPS)
    for name in groups:
        try:
            module = importlib.import_module(f"minedet.cli.{name}")
        except ModuleNotFoundError as e:  # a group not written yet
            if e.name == f"minedet.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args, extra = parser.parse_known_args(argv)
    # argparse stops a positional list at the first option: KEY=VALUE overrides written after
    # --out / --resume arrive here and belong to the command's overrides
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MinedetError as e:
        print(f"minedet: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written (a folder under a file, no space, no permission)
        if e.filename is None:
            raise
        print(f"minedet: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minedet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
