"""Network exposure of a run: what listens where, and who may talk to it.

* Local runs (``cluster.address`` unset): Ray's GCS, raylet, object manager, workers and
  agents listen on 127.0.0.1 only, and Ray's token authentication is on with a random
  per-process token (:func:`local_ray_env`). The torch.distributed rendezvous store of rank 0
  listens on the rendezvous host only, never on every interface (:func:`bind_stores_to_host`,
  installed in every Ray worker by :func:`setup_worker`), and gloo pairs use the loopback
  interface.
* Cluster runs (``cluster.address`` set): Ray token authentication is required
  (:func:`cluster_ray_env`); see docs/security.md for making and sharing the token and the
  ports to open.
"""
from __future__ import annotations

import importlib
import os
import secrets
import socket
import sys
from typing import Any

from xclass.config_types import ConfigError

#: the loopback address every local server binds to (Ray treats exactly this one as local-only)
LOOPBACK = "127.0.0.1"


def local_ray_env() -> None:
    """Environment of a local Ray instance, before ``ray.init``: loopback-only servers, token
    authentication with a fresh random token unless the user set ``RAY_AUTH_MODE`` /
    ``RAY_AUTH_TOKEN`` already, gloo on the loopback interface."""
    # Ray replaces 127.0.0.1 by the machine's outward address unless "clusters" are disabled;
    # with them disabled its node address (and so every server's bind address) is 127.0.0.1.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if os.environ.get("RAY_AUTH_MODE") in (None, ""):
        os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ["RAY_AUTH_MODE"] == "token" and not (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback_ifname())
    _refresh_imported_ray()


def _refresh_imported_ray() -> None:
    """Ray reads these variables at import: when it is imported already (tests, notebooks),
    update its cached constant and configuration like ``ray.init`` itself does."""
    if "ray" not in sys.modules:
        return
    import ray._private.ray_constants as rc

    rc.ENABLE_RAY_CLUSTER = False
    try:
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def cluster_ray_env() -> None:
    """Before joining ``cluster.address``: token authentication on, and a token available."""
    mode = os.environ.get("RAY_AUTH_MODE") or "token"
    if mode != "token" and os.environ.get("XCLASS_RAY_INSECURE") != "1":
        raise ConfigError(
            f"RAY_AUTH_MODE={mode}: refusing to join a Ray cluster without token authentication "
            "(set RAY_AUTH_MODE=token and share the token, see docs/security.md; "
            "XCLASS_RAY_INSECURE=1 overrides on an isolated network)")
    os.environ["RAY_AUTH_MODE"] = mode
    if mode == "token" and not _token_available():
        raise ConfigError(
            "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or run "
            "`ray get-auth-token --generate` on the head and copy ~/.ray/auth_token to every node "
            "(see docs/security.md)")


def _token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
    return os.path.isfile(path) and os.path.getsize(path) > 0


def _loopback_ifname() -> str:
    """Name of the loopback interface (``lo`` on Linux)."""
    try:
        for _, name in socket.if_nameindex():
            if name.startswith("lo"):
                return name
    except OSError:
        pass
    return "lo"


def setup_worker() -> None:
    """Ray ``worker_process_setup_hook``: runs in every Ray worker before any task."""
    bind_stores_to_host()


def bind_stores_to_host() -> None:
    """Make rank 0's rendezvous TCPStore listen on the rendezvous host only.

    torch's TCPStore server binds every interface; here rank 0 binds its listening socket to
    the host named in the rendezvous URL (127.0.0.1 for local runs, the node address on a
    cluster) and hands it to the store (``master_listen_fd``). Idempotent.
    """
    # (``import torch.distributed.rendezvous as m`` yields the function of that name)
    rdz = importlib.import_module("torch.distributed.rendezvous")
    original = rdz._create_c10d_store
    if getattr(original, "_xclass_bound", False):
        return

    def create(hostname: str, port: int, rank: int, world_size: int, timeout: Any,
               use_libuv: bool = True) -> Any:
        if rank != 0 or rdz._torchelastic_use_agent_store():
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        fd, bound = _listen(hostname, port)
        return rdz.TCPStore(host_name=hostname, port=bound, world_size=world_size, is_master=True,
                            timeout=timeout, multi_tenant=True, use_libuv=True, master_listen_fd=fd)

    create._xclass_bound = True  # type: ignore[attr-defined]
    rdz._create_c10d_store = create


def _listen(host: str, port: int) -> tuple:
    """A listening TCP socket on ``host:port`` only; returns (detached fd, port)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(addr)
    sock.listen(2048)
    bound = sock.getsockname()[1]
    return sock.detach(), bound
