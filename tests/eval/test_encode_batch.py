"""export-index's length-sorted sub-batches give the embeddings of one row at a time."""
import numpy as np
import torch

from xclass import components
from xclass.eval.embed import encode_batch
from xclass.models.registry import ENCODERS


def test_length_sorted_subbatches_equal_single_rows():
    components.load_all()
    torch.manual_seed(0)
    enc = ENCODERS.get("ecapa")({"n_mels": 8, "inputs": {"fbank": {"n_mels": 8}}}, 6, channels=16, scale=2,
                                mfa_channels=24, attention_dim=8, se_bottleneck=4).eval()
    lengths = torch.tensor([5, 40, 12, 33, 7, 40, 1, 19, 26])
    fb = torch.randn(len(lengths), 40, 8) * (torch.arange(40)[None, :, None] < lengths[:, None, None])
    with torch.no_grad():
        single = np.stack([enc({"fbank": fb[i:i + 1, :n], "lengths": lengths[i:i + 1]})[0].numpy()
                           for i, n in enumerate(lengths.tolist())])
        for budget in (0, 1, 45, 80, 10_000):
            got = encode_batch(enc, {"fbank": fb, "lengths": lengths}, budget)
            np.testing.assert_allclose(got, single, rtol=1e-4, atol=1e-5)
