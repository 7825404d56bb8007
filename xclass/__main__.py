"""``python -m xclass ...``: the same command line as the ``xclass`` script."""
import sys

from xclass.cli.main import main

sys.exit(main())
