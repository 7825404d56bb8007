"""The package tree is organised by layer (docs/architecture.md): the top-level folders are the
layers, the command line is imported by nothing below it, the training package only by what runs or
loads a training run, and torch.distributed only inside xclass/parallel/."""
import ast
import os
from typing import Dict, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "xclass")

LAYERS = {"tasks", "parallel", "data", "models", "losses", "heads", "train", "eval", "importers", "cli"}

#: modules outside xclass/train/ that may import it, with the reason
TRAIN_USERS = {
    "xclass/launcher.py": "starts the training loop (in process or on Ray workers)",
    "xclass/components.py": "the global-batch slicer and head resharding of the reader/checkpoint path",
    "xclass/eval/embed.py": "loads a trained run: its checkpoint, safe_load and the head it builds",
}


def _imports() -> Dict[str, Set[str]]:
    """module path (relative, with slashes) -> every xclass/torch module it imports, at any depth."""
    out: Dict[str, Set[str]] = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(d, f)
            with open(path, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            mods: Set[str] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods.add(node.module)
                    mods.update(f"{node.module}.{a.name}" for a in node.names)
            out[os.path.relpath(path, ROOT).replace(os.sep, "/")] = mods
    return out


IMPORTS = _imports()


def _importers_of(prefix: str):
    return {p for p, mods in IMPORTS.items() if any(m == prefix or m.startswith(prefix + ".") for m in mods)}


def test_top_level_folders_are_the_layers():
    folders = {n for n in os.listdir(PKG) if os.path.isdir(os.path.join(PKG, n)) and n != "__pycache__"
               and os.path.exists(os.path.join(PKG, n, "__init__.py"))}
    assert folders == LAYERS


def test_nothing_below_the_command_line_imports_it():
    users = {p for p in _importers_of("xclass.cli") if not p.startswith("xclass/cli/")}
    # the demo drives the public CLI; `python -m xclass` is the CLI's entry point
    assert users <= {"xclass/demo.py", "xclass/__main__.py"}, users


def test_train_is_imported_only_by_what_runs_or_loads_training():
    users = {p for p in _importers_of("xclass.train") if not p.startswith(("xclass/train/", "xclass/cli/"))}
    assert users <= set(TRAIN_USERS), users - set(TRAIN_USERS)


def test_torch_distributed_only_in_parallel():
    users = {p for p in _importers_of("torch.distributed") if not p.startswith("xclass/parallel/")}
    assert not users, users
