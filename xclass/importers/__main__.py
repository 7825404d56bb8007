import sys

from xclass.importers import main

sys.exit(main())
