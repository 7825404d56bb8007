"""The command-line programs: ``xclass`` (:mod:`xclass.cli.main`) with its subcommands'
glue (data, evaluate, importers) and the XMC tools (``python -m xclass.cli.xmc``)."""
from xclass.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
