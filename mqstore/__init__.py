"""mqstore: RabbitMQ's messaging model (exchanges, queues, bindings, publish, consume, ack)
in one SQLite file, with a pika-shaped blocking API and an asyncio API."""

from importlib.metadata import PackageNotFoundError, version

from . import aio, rpc
from . import errors as exceptions
from . import types as spec
from .blocking import BlockingChannel, BlockingConnection, ConnectionParameters, URLParameters
from .errors import (
    AccessRefusedError,
    AMQPChannelError,
    AMQPConnectionError,
    AMQPError,
    ChannelClosed,
    ChannelClosedByBroker,
    ChannelClosedByClient,
    ChannelWrongStateError,
    CommandInvalidError,
    ConnectionClosed,
    ConnectionClosedByBroker,
    ConnectionClosedByClient,
    ConnectionWrongStateError,
    ContentTooLargeError,
    DuplicateConsumerTag,
    FeatureNotSupportedError,
    HardError,
    InternalBrokerError,
    LeaseLostError,
    MessageTooLargeError,
    MqstoreError,
    NackError,
    NotAllowedError,
    NotFoundError,
    PreconditionFailedError,
    ResourceLockedError,
    SchemaVersionError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreReplacedError,
    UnroutableError,
    UsedAfterForkError,
)
from .types import BasicProperties, DeliveryMode, ExchangeType

try:
    __version__ = version("mqstore")
except PackageNotFoundError:  # running from a checkout without installation
    __version__ = "0+unknown"

__all__ = [
    "AMQPChannelError",
    "AMQPConnectionError",
    "AMQPError",
    "AccessRefusedError",
    "BasicProperties",
    "BlockingChannel",
    "BlockingConnection",
    "ChannelClosed",
    "ChannelClosedByBroker",
    "ChannelClosedByClient",
    "ChannelWrongStateError",
    "CommandInvalidError",
    "ConnectionClosed",
    "ConnectionClosedByBroker",
    "ConnectionClosedByClient",
    "ConnectionParameters",
    "ConnectionWrongStateError",
    "ContentTooLargeError",
    "DeliveryMode",
    "DuplicateConsumerTag",
    "ExchangeType",
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
    "URLParameters",
    "UnroutableError",
    "UsedAfterForkError",
    "__version__",
    "aio",
    "exceptions",
    "rpc",
    "spec",
]
