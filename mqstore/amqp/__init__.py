"""The AMQP 0-9-1 server (``mqstore serve``): RabbitMQ clients (pika, aio-pika, kombu and
Celery) talk to an mqstore file over the network.

It is another face over the same core as the blocking and asyncio APIs: every channel
operation is a :class:`mqstore.state.ChannelState` step run by the engine. Only this
subpackage imports pamqp (the wire codec).
"""

from .server import Server, ServerConfig, serve

__all__ = ["Server", "ServerConfig", "serve"]
