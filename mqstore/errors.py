"""Every error mqstore raises, shaped like pika's exceptions and keyed by AMQP reply codes.

Code written for pika catches ``pika.exceptions.ChannelClosedByBroker`` and reads
``reply_code``/``reply_text``; the same names work here, and the AMQP front end maps each
class 1:1 onto Channel.Close or Connection.Close.

    MqstoreError (= AMQPError)
    ├── AMQPChannelError
    │   ├── ChannelClosed
    │   │   ├── ChannelClosedByClient
    │   │   └── ChannelClosedByBroker              reply_code / reply_text, closes the channel
    │   │       ├── ContentTooLargeError           311
    │   │       ├── AccessRefusedError             403
    │   │       ├── NotFoundError                  404
    │   │       ├── ResourceLockedError            405
    │   │       └── PreconditionFailedError        406
    │   │           ├── LeaseLostError             406 (stale ack/nack: lease was lost)
    │   │           └── MessageTooLargeError       406 (body above max_message_size)
    │   ├── ChannelWrongStateError                 channel used after it closed
    │   ├── UnroutableError                        312, mandatory publish no queue took
    │   ├── NackError                              a publish the broker refused
    │   └── DuplicateConsumerTag
    ├── AMQPConnectionError
    │   ├── ConnectionClosed
    │   │   ├── ConnectionClosedByClient
    │   │   └── ConnectionClosedByBroker
    │   │       └── HardError                      reply_code / reply_text, closes the connection
    │   │           ├── CommandInvalidError        503
    │   │           ├── NotAllowedError            530
    │   │           ├── FeatureNotSupportedError   540
    │   │           └── InternalBrokerError        541
    │   └── ConnectionWrongStateError              connection used after it closed
    └── StoreError                                 SQLite failed underneath
        ├── StoreBusyError                         the write lock stayed taken past the timeout
        ├── StoreIOError                           I/O error at write or commit: outcome unknown
        ├── StoreFullError                         disk (nearly) full: publish refused, not stored
        ├── StoreCorruptError                      file is not SQLite or is damaged
        ├── StoreReplacedError                     file deleted or replaced while open
        ├── UsedAfterForkError                     connection inherited through fork()
        └── SchemaVersionError                     file carries a schema this code does not know
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class MqstoreError(Exception):
    """Root of every mqstore error."""


AMQPError = MqstoreError


class AMQPChannelError(MqstoreError):
    """A problem confined to one channel."""


class ChannelClosed(AMQPChannelError):
    """The channel is closed; ``reply_code`` and ``reply_text`` say why."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text

    def __str__(self) -> str:
        return f"({self.reply_code}, {self.reply_text!r})"


class ChannelClosedByClient(ChannelClosed):
    """The application closed the channel."""


class ChannelClosedByBroker(ChannelClosed):
    """The broker refused an operation and closed the channel (AMQP soft error)."""

    REPLY_CODE = 0

    def __init__(self, reply_text: str, reply_code: int | None = None) -> None:
        super().__init__(self.REPLY_CODE if reply_code is None else reply_code, reply_text)


class ContentTooLargeError(ChannelClosedByBroker):
    """311: the content is too large for the broker to accept."""

    REPLY_CODE = 311


class AccessRefusedError(ChannelClosedByBroker):
    """403: reserved names (``amq.*``, the default exchange) or internal exchanges."""

    REPLY_CODE = 403


class NotFoundError(ChannelClosedByBroker):
    """404: the named queue or exchange does not exist."""

    REPLY_CODE = 404


class ResourceLockedError(ChannelClosedByBroker):
    """405: an exclusive queue belongs to another connection."""

    REPLY_CODE = 405


class PreconditionFailedError(ChannelClosedByBroker):
    """406: inequivalent redeclare, unknown delivery tag, invalid argument, queue in use."""

    REPLY_CODE = 406


class LeaseLostError(PreconditionFailedError):
    """406: an ack/nack/reject for a delivery whose lease expired; it changed nothing."""


class MessageTooLargeError(PreconditionFailedError):
    """406: the body is larger than the store's ``max_message_size``."""


class ChannelWrongStateError(AMQPChannelError):
    """The channel was used after it closed."""


class UnroutableError(AMQPChannelError):
    """A mandatory publish reached no queue; ``messages`` holds the returned messages."""

    def __init__(self, messages: Sequence[Any]) -> None:
        super().__init__(f"{len(messages)} unroutable message(s) returned")
        self.messages = list(messages)


class NackError(AMQPChannelError):
    """The broker refused responsibility for a publish (for example a full queue)."""

    def __init__(self, messages: Sequence[Any], reason: str = "") -> None:
        super().__init__(reason or f"{len(messages)} message(s) nacked")
        self.messages = list(messages)
        self.reason = reason


class DuplicateConsumerTag(AMQPChannelError):
    """The consumer tag is already in use on this channel."""


class AMQPConnectionError(MqstoreError):
    """A problem with the whole connection."""


class ConnectionClosed(AMQPConnectionError):
    """The connection is closed; ``reply_code`` and ``reply_text`` say why."""

    def __init__(self, reply_code: int, reply_text: str) -> None:
        super().__init__(reply_code, reply_text)
        self.reply_code = reply_code
        self.reply_text = reply_text


class ConnectionClosedByClient(ConnectionClosed):
    """The application closed the connection."""


class ConnectionClosedByBroker(ConnectionClosed):
    """The broker closed the connection."""


class HardError(ConnectionClosedByBroker):
    """An AMQP hard error: the broker closes the whole connection."""

    REPLY_CODE = 0

    def __init__(self, reply_text: str, reply_code: int | None = None) -> None:
        super().__init__(self.REPLY_CODE if reply_code is None else reply_code, reply_text)


class CommandInvalidError(HardError):
    """503: the command is not valid here (for example an unknown exchange type in 3.x)."""

    REPLY_CODE = 503


class NotAllowedError(HardError):
    """530: the operation is not allowed (reused consumer tag, unknown vhost)."""

    REPLY_CODE = 530


class FeatureNotSupportedError(HardError):
    """540: the feature is not implemented (``immediate``, ``prefetch_size``)."""

    REPLY_CODE = 540


class InternalBrokerError(HardError):
    """541: the broker failed internally."""

    REPLY_CODE = 541


class ConnectionWrongStateError(AMQPConnectionError):
    """The connection was used after it closed."""


class StoreError(MqstoreError):
    """SQLite failed underneath an operation; the original error is ``__cause__``."""


class StoreBusyError(StoreError):
    """Another process held the write lock past the busy timeout; nothing was written."""


class StoreIOError(StoreError):
    """An I/O error or full disk at write or commit; the outcome of the batch is unknown."""


class StoreFullError(StoreError):
    """Free disk space is below the limit (or the disk is full): the publish was refused and
    not stored; acks and deletes keep working so consumers can drain."""


class StoreCorruptError(StoreError):
    """The file is not an SQLite database or is damaged; it is never reinitialised."""


class StoreReplacedError(StoreError):
    """The database file was deleted or replaced while open; publishing stops."""


class UsedAfterForkError(StoreError):
    """A connection opened in a parent process was used in a forked child."""


class SchemaVersionError(StoreError):
    """The file carries an mqstore schema newer than (or unknown to) this code."""


__all__ = [
    "AMQPChannelError",
    "AMQPConnectionError",
    "AMQPError",
    "AccessRefusedError",
    "ChannelClosed",
    "ChannelClosedByBroker",
    "ChannelClosedByClient",
    "ChannelWrongStateError",
    "CommandInvalidError",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionClosedByClient",
    "ConnectionWrongStateError",
    "ContentTooLargeError",
    "DuplicateConsumerTag",
    "FeatureNotSupportedError",
    "HardError",
    "InternalBrokerError",
    "LeaseLostError",
    "MessageTooLargeError",
    "MqstoreError",
    "NackError",
    "NotAllowedError",
    "NotFoundError",
    "PreconditionFailedError",
    "ResourceLockedError",
    "SchemaVersionError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreIOError",
    "StoreReplacedError",
    "UnroutableError",
    "UsedAfterForkError",
]
