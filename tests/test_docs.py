"""The README and docs/ stay true to the code: the two set-up commands come first, every CLI
subcommand is in the README, the configuration reference is the generated one (so every key is
documented), every config file and every docs page they name exists, and the README stays short."""
import glob
import os
import re
import subprocess
import sys

from xclass.cli import build_parser
from xclass.config import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
DOCS = {p: open(p).read() for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))}


def test_starts_with_the_two_commands():
    before, first_block = README.split("```")[:2]
    assert before.strip() == "# xclass"  # nothing ahead of the commands but the title
    lines = first_block.strip().splitlines()[1:]  # drop the "bash" tag
    assert [l.split("#")[0].strip() for l in lines] == ["make demo", "make test"]


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_config_reference_is_generated_and_fresh():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "config_doc.py"), "--check"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    reference = DOCS[os.path.join(ROOT, "docs", "configuration.md")]
    for line in describe():
        key = line.split(" (", 1)[0]
        assert f"`{key}`" in reference, key


def test_every_subcommand_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    for name in sub.choices:
        assert f"xclass {name}" in README, name


def test_referenced_configs_exist():
    for text in [README, *DOCS.values()]:
        for path in set(re.findall(r"configs/[\w/.-]+\.(?:yaml|json)", text)):
            assert os.path.exists(os.path.join(ROOT, path)), path


def test_linked_docs_exist():
    for src, text in [(os.path.join(ROOT, "README.md"), README), *DOCS.items()]:
        for link in re.findall(r"\]\(([\w/.-]+\.md)\)", text):
            assert os.path.exists(os.path.join(os.path.dirname(src), link)), (src, link)
