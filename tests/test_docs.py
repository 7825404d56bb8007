"""The README and docs/ stay true to the code: the two set-up commands come first, every CLI
subcommand is in the README, the configuration reference is the generated one (so every key is
documented), every config file and every docs page they name exists, every command line they show uses
flags its command has, and the README stays short."""
import argparse
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


def _map_paths(text: str):
    """Paths of the package map in docs/architecture.md: the first column of the tree block
    (``xclass/`` entries indented by two spaces, top-level folders not), split on commas."""
    block = text.split("```\nxclass/\n", 1)[1].split("```", 1)[0]
    for line in block.splitlines():
        if not line.strip() or line.startswith("   "):  # blank, or a continuation of the description
            continue
        first = line.strip().split("  ")[0]
        for name in first.split(", "):
            yield os.path.join("xclass", name) if line.startswith("  ") else name


def test_architecture_map_paths_exist():
    arch = DOCS[os.path.join(ROOT, "docs", "architecture.md")]
    paths = list(_map_paths(arch))
    assert "xclass/tasks/" in paths and "xclass/heads/zloss/" in paths and "launch/" in paths
    missing = [p for p in paths if not os.path.exists(os.path.join(ROOT, p))]
    assert not missing, missing


#: paths the docs name inside other projects
OTHER_PROJECTS = {"tests/pcap"}  # nDPI's regression captures (docs/tasks.md)


def test_paths_named_in_readme_and_docs_exist():
    """Every xclass/..., tests/... and tools/... path in README.md and docs/ exists (name
    patterns such as ``gpu_<date>.jsonl`` or ``_{a,b}`` and paths inside other projects are skipped)."""
    missing = []
    for src, text in [("README.md", README), *DOCS.items()]:
        for m in re.finditer(r"(?<![\w/.-])((?:xclass|tests|tools)/[\w/.-]*\w/?)(?![<{*\w])", text):
            path = m.group(1)
            if not os.path.exists(os.path.join(ROOT, path)) and path not in OTHER_PROJECTS:
                missing.append((os.path.basename(src), path))
    assert not missing, missing


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_section_links_exist():
    """Links of the form page.md#anchor point at a heading of that page."""
    for src, text in [(os.path.join(ROOT, "README.md"), README), *DOCS.items()]:
        for page, anchor in re.findall(r"\]\(([\w/.-]+\.md)#([\w-]+)\)", text):
            target = open(os.path.join(os.path.dirname(src), page)).read()
            anchors = {_slug(h) for h in re.findall(r"(?m)^#+ (.+)$", target)}
            assert anchor in anchors, (src, page, anchor)


#: every place that shows commands: config comments, README, docs, tool docstrings
COMMAND_SOURCES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)) + [
    os.path.join(ROOT, "README.md"), *DOCS, *sorted(glob.glob(os.path.join(ROOT, "tools", "*.py")))]
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _command_text(path: str) -> str:
    """The file with ``\\``-continued lines joined (a YAML comment's ``#`` dropped first)."""
    text = open(path).read()
    if path.endswith(".yaml"):
        text = "\n".join(l.lstrip()[1:] for l in text.splitlines() if l.lstrip().startswith("#"))
    return re.sub(r"\\\n\s*", " ", text)


def _subparsers(parser):
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _subcommand(top, words):
    """The parser of ``xclass WORDS`` (``["import", "flows"]``; a second word that is not a nested
    subcommand is an argument), or None when the first word is no subcommand (prose)."""
    parser = _subparsers(top).get(words[0])
    if parser is not None and len(words) > 1:
        parser = _subparsers(parser).get(words[1], parser)
    return parser


def test_xclass_commands_in_docs_use_existing_flags():
    """Every ``--flag`` of an ``xclass SUBCOMMAND ...`` line in config comments, the README, docs/
    and the tools' docstrings is an option of that subcommand (a renamed flag fails here)."""
    top = build_parser()
    bad, seen = [], 0
    for path in COMMAND_SOURCES:
        for m in re.finditer(r"(?:^|[\s`(])xclass ([a-z][\w-]*(?: [a-z][\w-]*)?)([^`|;#\n]*)", _command_text(path)):
            parser = _subcommand(top, m.group(1).split())
            if parser is None:  # prose ("xclass trains ...")
                continue
            seen += 1
            opts = {o for a in parser._actions for o in a.option_strings}
            bad += [(os.path.relpath(path, ROOT), m.group(1), f) for f in FLAG.findall(m.group(2)) if f not in opts]
    assert seen > 150 and not bad, (seen, bad)


def test_tool_commands_in_docs_use_existing_flags():
    """The same for ``tools/X.py [SUB] ...``, ``python -m xclass.cli.xmc SUB ...`` and ``python -m
    tests.tasks.pipeline ...`` lines, against each one's ``--help``."""
    pattern = re.compile(r"(tools/\w+\.py(?: [a-z][\w-]*(?= ))?|-m xclass\.cli\.xmc(?: [\w-]+)?|"
                         r"-m tests\.tasks\.pipeline)([^\n`;|]*)")
    wanted = {}
    for path in COMMAND_SOURCES:
        for m in pattern.finditer(_command_text(path)):
            for flag in FLAG.findall(m.group(2)):
                wanted.setdefault(m.group(1), set()).add((flag, os.path.relpath(path, ROOT)))
    bad = []
    for command, flags in sorted(wanted.items()):
        argv = command.split() if command.startswith("-m") else [os.path.join(ROOT, w) if i == 0 else w
                                                                   for i, w in enumerate(command.split())]
        r = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": ROOT})
        bad += [(command, f, src) for f, src in sorted(flags)
                if not re.search(r"(?<![\w-])" + re.escape(f) + r"(?![\w-])", r.stdout)]
    assert len(wanted) > 15 and not bad, bad
