"""Importers of real user data into the xclass Parquet schema of a task: faces, audio, flows,
pcap (classification tasks) and XC-repository files, texts with label lists and WordNet (XMC).

The command-line glue (``xclass import ...``) lives in :mod:`xclass.cli.importers`."""
from xclass.importers.common import ImportError_

__all__ = ["ImportError_"]
