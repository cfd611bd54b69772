"""Exceptions as logs may show them: type and place, never the message.

An exception's message can quote memory or request text (a database error with its bound parameters,
a tokenizer error with its input), so memos/ and proxy/ log only this summary, never a traceback.
"""

from __future__ import annotations


def exception_summary(exc: BaseException) -> str:
    """`module.Type at file:line` of where `exc` was raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return f"{type(exc).__module__}.{type(exc).__qualname__}{where}"
