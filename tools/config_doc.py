"""The configuration reference: every config key with its type, default and meaning, generated
from the config dataclasses (xclass/config.py, config_types.py).

    python tools/config_doc.py           # print the Markdown table
    python tools/config_doc.py --write   # rewrite the table in docs/configuration.md
    python tools/config_doc.py --check   # exit 1 when docs/configuration.md is stale

tests/test_docs.py runs the check."""
import argparse
import os
import sys

from xclass.config import RunConfig, describe

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "configuration.md")
START, END = "<!-- config-table:start", "<!-- config-table:end -->"


def table() -> str:
    """The Markdown table of every key of RunConfig, one row per key."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for line in describe(RunConfig):
        head, doc = line.split(": ", 1)
        key, rest = head.split(" (", 1)
        tname, default = rest.rstrip(")").split(", default ", 1)
        rows.append(f"| `{key}` | {tname} | `{default}` | {doc} |")
    return "\n".join(rows)


def render(text: str) -> str:
    """``text`` (the document) with the block between the markers replaced by :func:`table`."""
    a = text.index(START)
    a = text.index("\n", a) + 1
    b = text.index(END)
    return text[:a] + table() + "\n" + text[b:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="rewrite the table in docs/configuration.md")
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/configuration.md is stale")
    args = ap.parse_args()
    if not (args.write or args.check):
        print(table())
        return 0
    text = open(DOC).read()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC} is stale: run python tools/config_doc.py --write", file=sys.stderr)
            return 1
        return 0
    tmp = DOC + ".tmp"
    with open(tmp, "w") as f:
        f.write(new)
    os.replace(tmp, DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
