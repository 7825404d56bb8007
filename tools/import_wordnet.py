"""Import WordNet 3.0 (Debian package wordnet-base) as an XMC dataset.

    apt-get install -y wordnet-base
    python tools/import_wordnet.py --out runs/data/wordnet
"""
import sys

from xclass.cli.xmc import main

if __name__ == "__main__":
    sys.exit(main(["import-wordnet", *sys.argv[1:]]))
