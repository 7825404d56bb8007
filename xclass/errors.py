"""The user-error types (printed as one line, exit code 2) and the test that recognises them.
This module imports nothing from train/: the training code raises the errors defined here."""
from __future__ import annotations

import errno
import re


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used with this run (names the file and the field)."""


class NonFiniteError(RuntimeError):
    """The run diverged (loss or gradients NaN/Inf for too many consecutive steps)."""


def is_user_error(exc: BaseException) -> bool:
    """Config, data and checkpoint errors, unknown names, missing or existing files, a diverged run
    and a full disk: a clear message suffices. Anything else (a plain KeyError included) is a bug
    and keeps its traceback."""
    from xclass.config_types import ConfigError
    from xclass.data.schema import DataError
    from xclass.registry import UnknownNameError

    kinds = (ConfigError, CheckpointError, DataError, NonFiniteError, UnknownNameError, FileNotFoundError,
             FileExistsError)
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True  # "[Errno 28] No space left on device: 'PATH'"
    return isinstance(exc, kinds)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


_BREAKS = re.compile("[ \t]*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+[ \t]*")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x1f\x7f]")


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: line breaks (a CSV parser quoting a damaged row, say)
    become `` / `` and other control characters (a terminal escape in a hostile file) ``\\xNN``,
    so a user error is always printed as one plain line."""
    text = _BREAKS.sub(" / ", str(exc)).strip()
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
