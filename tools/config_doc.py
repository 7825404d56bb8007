"""Print the Markdown table of every config key (pasted into README.md's Configuration section;
tests/test_readme.py checks the README lists every key)."""
import dataclasses
import typing

from xclass.config import RunConfig, describe


def main() -> None:
    print("| key | type | default | meaning |")
    print("| --- | --- | --- | --- |")
    for line in describe(RunConfig):
        head, doc = line.split(": ", 1)
        key, rest = head.split(" (", 1)
        tname, default = rest.rstrip(")").split(", default ", 1)
        print(f"| `{key}` | {tname} | `{default}` | {doc} |")


if __name__ == "__main__":
    main()
