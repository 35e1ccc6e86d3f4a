"""The ``shadowcam`` command: a thin argparse front over library functions.

Subcommands are discovered from :mod:`pipeline.commands` (one module each, see its docstring).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from pipeline import __version__
from pipeline.types import ShadowcamError

# what `pip install "shadowcam[train]"` adds; a runtime-only install (an edge box) has none of them
TRAINING_PACKAGES = ("torch", "torchvision", "albumentations")


def get_args_parser() -> argparse.ArgumentParser:
    import pipeline.commands as commands

    parser = argparse.ArgumentParser(
        prog="shadowcam",
        description="Shadow-mode evaluation of warehouse camera classifiers: measure the train-to-production gap.",
    )
    parser.add_argument("--version", action="version", version=f"shadowcam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"pipeline.commands.{info.name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except ShadowcamError as e:
        print(f"shadowcam {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAINING_PACKAGES:
            raise
        print(f"shadowcam {args.command}: error: needs the training extras ({e.name} is not installed): "
              f"pip install 'shadowcam[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"shadowcam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
