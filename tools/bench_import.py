"""Import throughput with --workers: files per second of ``import faces`` and ``import audio``, and
flows per second of ``import flows``, on generated inputs shaped like the public benchmarks
(250x250 JPEG as LFW ships them; 8-second 16 kHz WAV, a VoxCeleb utterance's mean length; a
CESNET-QUIC22-style CSV with a PPI column), one process against N, same run; JSON lines.

    PYTHONPATH=. python tools/bench_import.py [--faces 600] [--utterances 200] [--flows 100000] [--workers 2]

The data are random (noise images, tones in noise): decoding cost does not depend on content.
Each row also says whether the dataset written with N workers equals the one written with one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import wave

import numpy as np


def make_faces(root: str, n: int, per_id: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        d = os.path.join(root, f"person{i // per_id:04d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (250, 250, 3), dtype=np.uint8)).save(
            os.path.join(d, f"{i:05d}.jpg"), quality=90)


def make_audio(root: str, n: int, per_id: int = 10, seconds: float = 8.0, sr: int = 16000) -> None:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        d = os.path.join(root, f"id{i // per_id:05d}")
        os.makedirs(d, exist_ok=True)
        x = 0.2 * np.sin(2 * np.pi * (100 + i) * t) + 0.05 * rng.standard_normal(len(t))
        with wave.open(os.path.join(d, f"{i:05d}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sr)
            w.writeframes(np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())


def make_flows(root: str, n: int, apps: int = 100) -> None:
    """One CSV in CESNET-QUIC22's columns: PPI = [[iat ms], [dir], [size]] of 5-30 packets."""
    import csv

    rng = np.random.default_rng(0)
    os.makedirs(root)
    with open(os.path.join(root, "flows.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["APP", "PPI", "DST_PORT", "PROTOCOL", "BYTES", "BYTES_REV", "PACKETS", "PACKETS_REV", "DURATION"])
        for _ in range(n):
            k = int(rng.integers(5, 31))
            ppi = [[0] + rng.integers(0, 200, k - 1).tolist(), rng.choice([1, -1], k).tolist(),
                   rng.integers(40, 1500, k).tolist()]
            w.writerow([f"app{int(rng.zipf(1.3)) % apps}", json.dumps(ppi), 443, 17, int(rng.integers(1000, 10 ** 5)),
                        int(rng.integers(1000, 10 ** 6)), k + int(rng.integers(0, 50)), k, round(float(rng.random() * 30), 3)])


def same_dataset(a: str, b: str) -> bool:
    import pyarrow.parquet as pq

    names = sorted(f for f in os.listdir(a) if f.endswith(".parquet"))
    return names == sorted(f for f in os.listdir(b) if f.endswith(".parquet")) and all(
        pq.read_table(os.path.join(a, f)).equals(pq.read_table(os.path.join(b, f))) for f in names)


def run(kind: str, root: str, out: str, workers: int, files: int) -> dict:
    from xclass.importers.audio import import_audio
    from xclass.importers.faces import import_faces
    from xclass.importers.flows import import_flows

    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "faces":
        import_faces(root, out, size=112, test_classes=5, num_pairs=200, show_progress=False, workers=workers)
    elif kind == "audio":
        import_audio(root, out, test_classes=5, num_trials=200, show_progress=False, workers=workers)
    else:
        import_flows([os.path.join(root, "flows.csv")], out, label_column="APP", ppi_column="PPI",
                     port_column="DST_PORT", proto_column="PROTOCOL", test_classes=10, show_progress=False,
                     stats_map="duration_s=DURATION,bytes_up=BYTES,bytes_down=BYTES_REV,packets_up=PACKETS,"
                               "packets_down=PACKETS_REV", workers=workers)
    wall = time.perf_counter() - t0
    return {"bench": f"import_{kind}", "files" if kind != "flows" else "flows": files, "workers": workers,
            "wall_s": round(wall, 2), f"{'files' if kind != 'flows' else 'flows'}_per_s": round(files / wall, 1),
            "main_process_cpu_s": round(time.process_time() - c0, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=int, default=600, help="250x250 JPEG files")
    ap.add_argument("--utterances", type=int, default=200, help="8 s 16 kHz WAV files")
    ap.add_argument("--flows", type=int, default=100_000, help="rows of a CESNET-style flow CSV")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, n, make in (("faces", a.faces, make_faces), ("audio", a.utterances, make_audio),
                              ("flows", a.flows, make_flows)):
            if n <= 0:
                continue
            root = os.path.join(tmp, kind)
            make(root, n)
            rows = [run(kind, root, os.path.join(tmp, f"{kind}_{w}"), w, n) for w in (1, a.workers)]
            rows[1]["same_dataset_as_1_worker"] = same_dataset(os.path.join(tmp, f"{kind}_1"),
                                                               os.path.join(tmp, f"{kind}_{a.workers}"))
            rows[1]["speedup"] = round(rows[0]["wall_s"] / rows[1]["wall_s"], 2)
            for r in rows:
                print(json.dumps({**r, "cpus": os.cpu_count()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
