"""Config loading: every YAML in configs/ loads; unknown keys and wrong types name the key."""
import glob
import os

import pytest

from xclass.config import ConfigError, RunConfig, describe, load_config, parse_override

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_YAML = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", ALL_YAML, ids=[os.path.relpath(p, ROOT) for p in ALL_YAML])
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    # round trip through a plain dict gives the same frozen config
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_unknown_key_names_path_and_file(tmp_path):
    p = _write(tmp_path, "bad.yaml", "head:\n  margn: arcface\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'head.margn'"):
        load_config(p)


def test_unknown_top_level_section(tmp_path):
    p = _write(tmp_path, "bad.yaml", "hed: {}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'hed'"):
        load_config(p)


@pytest.mark.parametrize(
    "text,key",
    [
        ("data:\n  batch_size: sixty\n", "data.batch_size"),
        ("optim:\n  lr: [1]\n", "optim.lr"),
        ("train:\n  progress: 3\n", "train.progress"),
        ("eval:\n  ks: [1, x]\n", r"eval.ks\[1\]"),
        ("eval:\n  index:\n    kind: 5\n", "eval.index.kind"),
        ("head: 3\n", "head"),
    ],
)
def test_wrong_type_names_key(tmp_path, text, key):
    p = _write(tmp_path, "t.yaml", text)
    with pytest.raises(ConfigError, match=key):
        load_config(p)


def test_base_include_and_override_order(tmp_path):
    _write(tmp_path, "b.yaml", "optim:\n  lr: 0.5\n  momentum: 0.8\ndata:\n  batch_size: 32\n")
    p = _write(tmp_path, "c.yaml", "base: b.yaml\noptim:\n  lr: 0.25\n")
    cfg = load_config(p, ["data.batch_size=16", "head.margin_params={s: 30, m: 0.3}"])
    assert cfg.optim.lr == 0.25 and cfg.optim.momentum == 0.8  # child wins, base fills in
    assert cfg.data.batch_size == 16  # override wins over both
    assert cfg.head.margin_params == {"s": 30, "m": 0.3}


def test_int_promotes_to_float_but_not_bool():
    cfg = load_config(None, ["optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=true"])


def test_circular_base(tmp_path):
    _write(tmp_path, "a.yaml", "base: b.yaml\n")
    p = _write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(p)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")
    with pytest.raises(ConfigError, match="is a directory, not a YAML config file"):
        load_config(str(tmp_path))
    (tmp_path / "latin.yaml").write_bytes(b"train:\n  out_dir: caf\xe9\n")
    with pytest.raises(ConfigError, match="latin.yaml: invalid YAML"):
        load_config(str(tmp_path / "latin.yaml"))
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("optim.lr")


def test_frozen():
    cfg = load_config(None)
    with pytest.raises(Exception):
        cfg.optim.lr = 3  # type: ignore[misc]


def test_describe_lists_every_leaf_with_doc():
    lines = describe()
    assert any(l.startswith("head.sample_rate (float, default 1.0): Partial-FC") for l in lines)
    assert all(": " in l and not l.endswith(": ") for l in lines), [l for l in lines if l.endswith(": ")]


def test_deepspeed_json_errors_name_the_file(tmp_path):
    from xclass.train.engine import _read_deepspeed_json

    (tmp_path / "ok.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert _read_deepspeed_json(str(tmp_path / "ok.json")) == {"zero_optimization": {"stage": 2}}
    (tmp_path / "bad.json").write_text('{"zero_optimization": ')
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "latin.json").write_bytes(b'{"a": "caf\xe9"}')
    for name, why in (("bad.json", "not valid JSON"), ("list.json", "not a JSON object"),
                      ("latin.json", "not valid JSON"), ("missing.json", "file not found")):
        with pytest.raises(ConfigError, match=f"deepspeed.config: .*{name}: {why}"):
            _read_deepspeed_json(str(tmp_path / name))
