"""README stays true to the code: the two set-up commands come first, every config key and
every CLI subcommand is documented, and every config file it names exists."""
import os
import re

from xclass.cli import build_parser
from xclass.config import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()


def test_starts_with_the_two_commands():
    before, first_block = README.split("```")[:2]
    assert before.strip() == "# xclass"  # nothing ahead of the commands but the title
    lines = first_block.strip().splitlines()[1:]  # drop the "bash" tag
    assert [l.split("#")[0].strip() for l in lines] == ["make demo", "make test"]


def test_every_config_key_documented():
    for line in describe():
        key = line.split(" (", 1)[0]
        assert f"`{key}`" in README, key


def test_every_subcommand_documented():
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    for name in sub.choices:
        assert f"xclass {name}" in README, name


def test_referenced_configs_exist():
    for path in set(re.findall(r"configs/[\w/.-]+\.(?:yaml|json)", README)):
        assert os.path.exists(os.path.join(ROOT, path)), path
