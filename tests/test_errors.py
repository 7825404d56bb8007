"""Only the user-error types end as one line and exit 2; a plain KeyError is a bug and keeps
its traceback."""
import errno

import pytest

from xclass.config_types import ConfigError
from xclass.errors import is_user_error
from xclass.losses import MARGINS
from xclass.registry import UnknownNameError


def test_unknown_registry_name_is_a_user_error_with_a_plain_message():
    with pytest.raises(UnknownNameError) as info:
        MARGINS.get("arcfce")
    assert is_user_error(info.value)
    assert str(info.value).startswith("unknown margin 'arcfce'; known: ")  # no KeyError quotes


@pytest.mark.parametrize("exc,user", [
    (KeyError("num_classes"), False),
    (AttributeError("x"), False),
    (ConfigError("key 'optim.lr' ..."), True),
    (FileNotFoundError("data/meta.json"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EACCES, "Permission denied"), False),
])
def test_is_user_error(exc, user):
    assert is_user_error(exc) is user


def test_one_line_breaks_and_control_characters():
    from xclass.errors import one_line

    msg = one_line(ValueError("f.csv: row 3 (\"a\nb\r\nc\x0bd\x85e\u2028f\") \x1b[31mred\x00 tab\tkept"))
    assert msg == 'f.csv: row 3 ("a / b / c / d / e / f") \\x1b[31mred\\x00 tab\tkept'
    assert len(msg.splitlines()) == 1
