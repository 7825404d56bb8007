"""Which exceptions are the user's input problems (printed as one line, exit code 2)."""
from __future__ import annotations

import errno


def is_user_error(exc: BaseException) -> bool:
    """Config, data, checkpoint and index errors, and missing files: a clear message suffices."""
    from xclass.config_types import ConfigError
    from xclass.train.checkpoint import CheckpointError

    kinds = [ConfigError, CheckpointError, FileNotFoundError, FileExistsError, KeyError]
    for mod, name in (("xclass.data.schema", "DataError"), ("xclass.eval.errors", "EvalError"),
                      ("xclass.train.nonfinite", "NonFiniteError")):
        try:
            kinds.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True  # "[Errno 28] No space left on device: 'PATH'"
    return isinstance(exc, tuple(kinds))


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
