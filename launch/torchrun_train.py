"""Debug entry without Ray: ``torchrun --nproc_per_node 2 launch/torchrun_train.py CONFIG [k=v ...]``.

Runs the same loop (xclass.train.loop.train) on torchrun's processes over gloo (CPU) or
nccl (``cluster.use_gpu=true``: each process trains on ``cuda:LOCAL_RANK``). Ray is the supported launcher; this is for debugging.
"""
import os
import sys

import torch.distributed as dist

from xclass.config import load_config
from xclass.parallel import ParallelContext
from xclass.parallel.device import backend_for, run_device
from xclass.parallel.launch import clean_exit
from xclass.train.loop import train


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not cfg.cluster.use_gpu else "cuda")
    if not cfg.cluster.use_gpu:
        from xclass.perf import tune_malloc

        tune_malloc()
    # the device first (torch.cuda.set_device), then the group: NCCL binds to the current device
    device = run_device(cfg, int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend_for(device) if cfg.cluster.use_gpu else cfg.cluster.backend)
    train(cfg, ParallelContext.from_env(device=device))
    clean_exit(0)


if __name__ == "__main__":
    main()
