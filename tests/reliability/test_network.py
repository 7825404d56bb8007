"""Issue item 2: a local ``xclass train --workers 2`` listens on loopback addresses only, and
joining a cluster requires Ray token authentication.

The listening sockets of the run's process tree (driver, GCS, raylet, Ray workers, the
rendezvous store, gloo) are listed with psutil while it trains; nothing connects anywhere."""
import ipaddress
import os
import subprocess
import sys
import time

import psutil
import pytest

from tests.reliability.common import TINY
from tests.train.common import write_features_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    if getattr(a, "ipv4_mapped", None) is not None:
        a = a.ipv4_mapped
    return a.is_loopback


def _listening(root: psutil.Process):
    try:
        pids = {root.pid} | {c.pid for c in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in pids:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.NoSuchProcess:
                name = "?"
            out.append((c.laddr.ip, c.laddr.port, name))
    return out


@pytest.mark.ray
@pytest.mark.slow
def test_local_ray_run_listens_on_loopback_only(tmp_path):
    data = write_features_data(str(tmp_path / "d"), rows_per_class=64)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "GLOO_", "MASTER_"))}
    env.update(PYTHONPATH=ROOT, DS_ACCELERATOR="cpu", RAY_USAGE_STATS_ENABLED="0")
    cmd = [sys.executable, "-m", "xclass.cli", "train", "--workers", "2", f"data.path={data}",
           f"train.out_dir={tmp_path / 'run'}", "train.max_steps=40", *TINY]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = set()
    try:
        while proc.poll() is None:
            seen.update(_listening(psutil.Process(proc.pid)))
            time.sleep(0.5)  # psutil.net_connections walks /proc: sampling it often slows the run
        out = proc.stdout.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    names = {n for _, _, n in seen}
    assert "gcs_server" in names and "raylet" in names, seen  # the sampling really saw the run
    external = sorted(s for s in seen if not _loopback(s[0]))
    assert not external, f"listening on non-loopback addresses: {external}"


def test_cluster_join_requires_token(monkeypatch, tmp_path):
    from xclass.config_types import ConfigError
    from xclass.parallel.netbind import cluster_ray_env

    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "XCLASS_RAY_INSECURE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="without token authentication"):
        cluster_ray_env()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(ConfigError, match="no token"):
        cluster_ray_env()
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "tok"))
    (tmp_path / "tok").write_text("0123456789abcdef" * 4)
    cluster_ray_env()


def test_rendezvous_store_binds_to_its_host():
    """The patched rank-0 store listens on 127.0.0.1 only (torch's own binds every interface)."""
    from datetime import timedelta

    import importlib

    from xclass.parallel.netbind import _listen, bind_stores_to_host

    rdz = importlib.import_module("torch.distributed.rendezvous")
    fd, port = _listen("127.0.0.1", 0)
    os.close(fd)
    bind_stores_to_host()
    store = rdz._create_c10d_store("127.0.0.1", port, 0, 1, timedelta(seconds=10))
    store.set("k", "v")
    assert store.get("k") == b"v"
    mine = [c for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid == os.getpid() and c.laddr.port == port]
    assert mine and all(_loopback(c.laddr.ip) for c in mine), mine
