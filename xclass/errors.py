"""Which exceptions are the user's input problems (printed as one line, exit code 2)."""
from __future__ import annotations


def is_user_error(exc: BaseException) -> bool:
    """Config, data, checkpoint and index errors, and missing files: a clear message suffices."""
    from xclass.config_types import ConfigError
    from xclass.train.checkpoint import CheckpointError

    kinds = [ConfigError, CheckpointError, FileNotFoundError, KeyError]
    for mod, name in (("xclass.data.schema", "DataError"), ("xclass.eval.errors", "EvalError"),
                      ("xclass.train.nonfinite", "NonFiniteError")):
        try:
            kinds.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return isinstance(exc, tuple(kinds))
