"""Errors to AMQP replies: which refusals close a channel and which close the connection.

The core raises :class:`~mqstore.errors.ChannelClosedByBroker` subclasses whose
``reply_code``/``reply_text`` already match RabbitMQ's (403, 404, 405, 406): those become
Channel.Close. Hard errors (:class:`~mqstore.errors.HardError`, and the protocol faults the
server finds itself: 501-505, 530, 540) become Connection.Close. Both carry the class and
method id of the method that failed, as RabbitMQ sends them.
"""

from __future__ import annotations

from typing import Any

from .. import errors

REPLY_SUCCESS = 200
CONNECTION_FORCED = 320
ACCESS_REFUSED = 403
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541


class Fault(Exception):
    """A connection error: the server sends Connection.Close with these values and closes."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def method_ids(method: Any) -> tuple[int, int]:
    """(class id, method id) of a pamqp method object, for Channel/Connection.Close."""
    index = getattr(type(method), "index", 0) or 0
    return index >> 16, index & 0xFFFF


def fault_for(exc: BaseException, method: Any = None) -> Fault:
    """The connection error for an exception that is not a channel error."""
    class_id, method_id = method_ids(method) if method is not None else (0, 0)
    if isinstance(exc, Fault):
        if not exc.class_id and method is not None:
            exc.class_id, exc.method_id = class_id, method_id
        return exc
    if isinstance(exc, errors.HardError):
        return Fault(exc.reply_code, exc.reply_text, class_id, method_id)
    if isinstance(exc, errors.DuplicateConsumerTag):
        return Fault(
            NOT_ALLOWED, f"NOT_ALLOWED - attempt to reuse consumer tag '{exc}'", class_id, method_id
        )
    if isinstance(exc, TypeError | ValueError):
        return Fault(SYNTAX_ERROR, f"SYNTAX_ERROR - {exc}", class_id, method_id)
    return Fault(INTERNAL_ERROR, f"INTERNAL_ERROR - {exc!r}"[:255], class_id, method_id)
