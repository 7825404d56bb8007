import sys

from xclass.cli.main import main

sys.exit(main())
