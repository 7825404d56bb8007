"""NCCL safety net of the collectives, checked without a GPU: a host tensor handed to an NCCL
group is moved to the group's device first; gloo groups take tensors where they are."""
import torch

from xclass.parallel import collectives as C


def test_host_tensor_moves_to_an_nccl_groups_device(monkeypatch):
    monkeypatch.setattr(C.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(C, "group_device", lambda group: torch.device("meta"))  # stands in for cuda:N
    x = torch.ones(3)
    assert C._on_group_device(x, object()).device.type == "meta"


def test_gloo_group_keeps_the_tensor(monkeypatch):
    monkeypatch.setattr(C.dist, "get_backend", lambda group=None: "gloo")
    x = torch.ones(3)
    assert C._on_group_device(x, object()) is x


def test_group_device_without_a_group_is_the_cpu():
    assert C.group_device(None) == torch.device("cpu")
