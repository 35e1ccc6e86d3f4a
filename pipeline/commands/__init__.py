"""One module per CLI command. Each defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``main(args) -> int``.

These modules must stay light at import time (argparse only): heavy imports go inside ``main``,
so ``shadowcam --help`` is instant and the runtime installs without training dependencies.
"""
