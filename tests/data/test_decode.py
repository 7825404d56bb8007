"""Batch decode helpers against hand-written expectations and Pillow round trips."""
from __future__ import annotations

import io

import numpy as np
import pytest

from xclass.data.decode import decode_images, pad_ragged, quic_inputs


def test_pad_ragged_frames_and_truncation():
    v = np.arange(10.0)
    off = np.array([0, 4, 4, 10])
    x, n = pad_ragged(v, off, row_width=2)
    expected = np.array([[[0, 1], [2, 3], [0, 0]], [[0, 0]] * 3, [[4, 5], [6, 7], [8, 9]]], dtype=float)
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(n, [2, 0, 3])
    x, n = pad_ragged(v, off, max_len=3, pad=-1)
    np.testing.assert_array_equal(x, [[0, 1, 2], [-1, -1, -1], [4, 5, 6]])
    np.testing.assert_array_equal(n, [3, 0, 3])


def test_decode_fixed_images_is_hwc_reshape():
    img = np.arange(2 * 2 * 3 * 2, dtype=np.uint8).reshape(2, 12)
    out = decode_images(img, (2, 2, 3))
    assert out.shape == (2, 2, 2, 3) and out[1, 0, 1, 2] == img[1, 5]


def test_decode_png_bytes_roundtrip():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    blobs = []
    for im in imgs:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    out = decode_images(np.array(blobs, dtype=object), (4, 5, 3))
    np.testing.assert_array_equal(out, imgs)  # PNG is lossless


def test_quic_inputs_scaling():
    b = {"pkt_sizes": np.array([[1500, 0]], np.int16), "pkt_dirs": np.array([[1, -1]], np.int8),
         "pkt_iat": np.array([[0.0, np.e - 1]], np.float32), "flow_stats": np.array([[0.0, np.e - 1]], np.float32)}
    q = quic_inputs(b)
    np.testing.assert_allclose(q["seq"][0], [[1, 1, 0], [0, -1, 1]], rtol=1e-6)
    np.testing.assert_allclose(q["stats"][0], [0, 1], rtol=1e-6)
