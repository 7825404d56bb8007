"""Every registered encoder: shape, finiteness, gradients, determinism, padding invariance."""
from __future__ import annotations

import pytest
import torch

from xclass.config import ModelConfig
from xclass.config_types import ConfigError
from xclass.models import ENCODER_INPUTS, ENCODER_TASKS, ENCODERS, build_encoder, decode_batch
from tests.models.fakes import fake_batch, meta_for

D = 24
# Encoders over raw text need a pretrained model: tests/models/test_hf_encoder.py covers them.
NAMES = [n for n in ENCODERS.names() if ENCODER_INPUTS.get(n) != "text"]
# Decoded inputs with a padded time axis (dim 1), whose valid prefix is ``lengths``.
TIME_KEYS = ("fbank", "pkt_sizes", "pkt_dirs", "pkt_iat", "tokens")


# Non-default options with their own masking paths, run through the padding tests too.
VARIANTS = [(n, {}) for n in NAMES] + [("ecapa", {"cmn": True}), ("embbag", {"mode": "sum"}),
                                       ("flowcnn", {"size_embed": 4, "flat_hidden": 8, "stats_embed": 3})]
VARIANT_IDS = [n + "".join(f"-{k}={v}" for k, v in p.items()) for n, p in VARIANTS]


def _setup(name: str, seed: int = 0, rows=(0, 1, 2, 3), params=None):
    task = ENCODER_TASKS[name][0]
    torch.manual_seed(seed)
    enc = build_encoder(ModelConfig(encoder=name, embedding_dim=D, params=params or {}),
                        meta_for(task))
    inputs, _ = decode_batch(task, fake_batch(task, rows=rows), meta_for(task))
    return task, enc, inputs


def _warm_bn(enc, inputs) -> None:
    """A few train-mode passes so BN running statistics are not the identity."""
    enc.train()
    with torch.no_grad():
        for _ in range(3):
            enc(inputs)
    enc.eval()


def _garbage_pad(inputs, extra: int, seed: int = 1):
    """Append ``extra`` steps of random junk to every padded time axis: a masked encoder
    must ignore it (padding content is not guaranteed to be zero)."""
    g = torch.Generator().manual_seed(seed)
    out = dict(inputs)
    for k in TIME_KEYS:
        if k in inputs and "lengths" in inputs:
            x = inputs[k]
            shape = (x.shape[0], extra) + tuple(x.shape[2:])
            junk = (torch.randint(0, 5, shape, generator=g) if not x.is_floating_point()
                    else 100 * torch.randn(shape, generator=g)).to(x.dtype)
            out[k] = torch.cat([x, junk], dim=1)
    return out


def test_registry_has_all_tasks():
    covered = {t for n in NAMES for t in ENCODER_TASKS[n][:1] if n != "mlp"}
    assert covered == {"face", "speaker", "quic", "xmc"}


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_and_gradient_reaches_every_parameter(name):
    _, enc, inputs = _setup(name)
    enc.train()
    emb = enc(inputs)
    assert emb.shape == (4, D) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    # A random projection: BN-normalised outputs make sum(emb**2) nearly constant.
    (emb * torch.randn_like(emb)).sum().backward()
    for pname, p in enc.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(name):
    _, a, inputs = _setup(name, seed=3)
    _, b, _ = _setup(name, seed=3)
    _, c, _ = _setup(name, seed=4)
    a.eval(), b.eval(), c.eval()
    with torch.no_grad():
        ea, eb, ec = a(inputs), b(inputs), c(inputs)
    assert torch.equal(ea, eb)
    assert not torch.allclose(ea, ec)


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_example_alone_equals_example_in_padded_batch(name, params):
    task, enc, inputs = _setup(name, params=params)
    _warm_bn(enc, inputs)
    with torch.no_grad():
        full = enc(inputs)
        padded = enc(_garbage_pad(inputs, extra=6))
        for i in range(4):
            alone, _ = decode_batch(task, fake_batch(task, rows=(i,)), meta_for(task))
            torch.testing.assert_close(enc(alone)[0], full[i], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(padded, full, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("name,params", VARIANTS, ids=VARIANT_IDS)
def test_train_mode_batch_statistics_ignore_padding(name, params):
    """Masked BN: junk padding changes neither the output nor the running statistics."""
    _, enc, inputs = _setup(name, params=params)
    enc2 = build_encoder(ModelConfig(encoder=name, embedding_dim=D, params=params),
                         meta_for(ENCODER_TASKS[name][0]))
    enc2.load_state_dict(enc.state_dict())
    enc.train(), enc2.train()
    torch.manual_seed(0)
    out = enc(inputs)
    torch.manual_seed(0)
    out2 = enc2(_garbage_pad(inputs, extra=5))
    torch.testing.assert_close(out2, out, atol=2e-5, rtol=1e-4)
    for (k, v), v2 in zip(enc.state_dict().items(), enc2.state_dict().values()):
        torch.testing.assert_close(v2, v, atol=2e-5, rtol=1e-4, msg=f"{name}: buffer {k}")


@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_names_its_key(name):
    with pytest.raises(ConfigError, match=r"model\.params\.no_such_knob"):
        build_encoder({"encoder": name, "embedding_dim": 8, "params": {"no_such_knob": 1}},
                      meta_for(ENCODER_TASKS[name][0]))


def test_unknown_encoder_and_missing_meta_key():
    with pytest.raises(ConfigError, match="model.encoder"):
        build_encoder(ModelConfig(encoder="nope"), {})
    with pytest.raises(ConfigError, match="'n_mels'"):
        build_encoder(ModelConfig(encoder="ecapa"), {"task": "speaker"})


def test_params_reach_the_module():
    enc = build_encoder(ModelConfig(encoder="iresnet", embedding_dim=8,
                                    params={"widths": [8, 16], "layers": [2, 1], "stem_width": 4}),
                        meta_for("face"))
    assert enc.fc.in_features == 16 * 4 * 4          # 16 px -> two stride-2 stages -> 4x4
    assert len(enc.blocks) == 3 and enc.stem[0].out_channels == 4


@pytest.mark.parametrize("size", [16, 20, 112])
def test_iresnet_sizes(size):
    meta = {"height": size, "width": size, "channels": 1}
    torch.manual_seed(0)
    enc = build_encoder(ModelConfig(encoder="iresnet", embedding_dim=8,
                                    params={"widths": [4, 4, 4, 4], "stem_width": 4,
                                            "layers": [1, 1, 1, 1]}), meta)
    img = torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)
    assert enc({"image": img}).shape == (2, 8)


@pytest.mark.parametrize("name", NAMES)
def test_follows_parameter_dtype(name):
    """Inputs are cast to the weights' dtype (DeepSpeed bf16 converts the module only)."""
    _, enc, inputs = _setup(name)
    _warm_bn(enc, inputs)
    with torch.no_grad():
        ref = enc(inputs)
        out = enc.to(torch.float64)(inputs)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, atol=1e-4, rtol=1e-3)


def test_flowcnn_size_embedding_rows_by_hand():
    """size_embed: packet j gets table row ``min(size // bin, bins - 1)`` (+ bins downstream)."""
    enc = build_encoder(ModelConfig(encoder="flowcnn", embedding_dim=D,
                                    params={"size_embed": 3, "size_bin": 8, "max_size": 1536}),
                        meta_for("quic"))
    inputs = {"pkt_sizes": torch.tensor([[100, 1600, 7, 1535]]), "pkt_dirs": torch.tensor([[1, -1, 1, -1]]),
              "pkt_iat": torch.zeros(1, 4), "lengths": torch.tensor([4])}
    rows = [12, 192 + 193, 0, 191 + 193]  # 1536 // 8 + 1 = 193 classes per direction
    got = enc.packet_features(inputs)[0, 3:].T
    torch.testing.assert_close(got, enc.size_table.weight[rows].detach())
    enc.eval()
    enc(dict(inputs, flow_stats=torch.ones(1, enc.num_stats))).sum().backward()
    assert enc.size_table.weight.grad[rows].abs().sum() > 0


def _port_flows(params, ports, protos):
    """A flowcnn with ``params`` on data that has ports, and two flows that differ only in port."""
    meta = dict(meta_for("quic"), inputs=dict(meta_for("quic").get("inputs", {}), ports={}))
    enc = build_encoder(ModelConfig(encoder="flowcnn", embedding_dim=D, params=params), meta).eval()
    x = {"pkt_sizes": torch.tensor([[100, 60]] * 2), "pkt_dirs": torch.tensor([[1, -1]] * 2),
         "pkt_iat": torch.zeros(2, 2), "lengths": torch.tensor([2, 2]), "flow_stats": torch.ones(2, enc.num_stats),
         "server_port": torch.tensor(ports), "ip_proto": torch.tensor(protos)}
    return enc, x, meta


def test_flowcnn_port_rows_by_hand_and_the_port_vector_reaches_the_embedding():
    """port_embed: row 0 unknown, 1..1023 the port, 1024 + port % buckets registered, 1024 +
    buckets dynamic; UDP adds 1025 + buckets. Two flows that differ only in port embed apart."""
    from xclass.models.encoders.flowcnn import port_rows

    port = torch.tensor([0, 53, 1023, 1024, 8080, 49151, 49152, 65535, 53])
    proto = torch.tensor([6, 6, 6, 6, 6, 6, 6, 6, 17])
    assert port_rows(port, proto, 100).tolist() == [0, 53, 1023, 1024 + 24, 1024 + 80, 1024 + 51, 1124, 1124,
                                                    1125 + 53]
    enc, x, _ = _port_flows({"port_embed": 4}, [53, 443], [17, 17])
    out = enc(x)
    assert not torch.allclose(out[0], out[1])
    with torch.no_grad():
        enc.port_table.weight.zero_()
    torch.testing.assert_close(enc(x)[0], enc(x)[1])            # only the port told them apart
    with pytest.raises(ValueError, match="server_port"):
        enc({k: v for k, v in x.items() if k != "server_port"})
    with pytest.raises(ValueError, match="inputs.ports"):       # data without ports: a build-time error
        build_encoder(ModelConfig(encoder="flowcnn", embedding_dim=D, params={"port_embed": 4}), meta_for("quic"))


def test_flowcnn_port_out_is_the_last_dimensions_of_the_embedding():
    enc, x, meta = _port_flows({"port_out": 5}, [53, 60000], [17, 6])
    out = enc(x)
    assert out.shape == (2, D)
    from xclass.models.encoders.flowcnn import port_rows

    torch.testing.assert_close(out[:, -5:], enc.port_out.weight[port_rows(x["server_port"], x["ip_proto"], 2048)])
    torch.testing.assert_close(out[0, :-5], out[1, :-5])        # no port_embed: the rest ignores the port
    with pytest.raises(ValueError, match="port_out"):
        build_encoder(ModelConfig(encoder="flowcnn", embedding_dim=D, params={"port_out": D}), meta)
