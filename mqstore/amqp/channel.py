"""One AMQP channel: glue between its frames and the core's :class:`ChannelState`.

Every operation is a ``ChannelState`` generator driven through the engine, as the asyncio
API does: no routing, leasing or SQL here. What this module adds is AMQP's concurrency:

* a worker task runs the channel's methods in order, so a slow commit on one channel never
  holds up another channel or the connection's reader;
* publishes are pipelined: each starts its store operation at once and the worker moves on,
  so many publishes of one channel share a group commit; a synchronous method (declare, get,
  ...) first waits for the publishes before it, keeping the channel's order;
* publisher confirms go out in publish order once the message is committed, coalesced with
  ``multiple`` where contiguous, a mandatory message's Basic.Return before its Ack;
* a dispatcher task pushes deliveries to consumers, as ``mqstore.aio``'s dispatch loop does,
  woken by the engine whenever messages may have become deliverable.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any

from pamqp import commands

from .. import errors
from ..state import ChannelState, Steps, drive_async, submit
from . import framing
from .replies import Fault, fault_for, method_ids

if TYPE_CHECKING:
    from .connection import AMQPConnection

log = logging.getLogger(__name__)

# Publishes of one channel allowed in flight (started, not yet committed) at once.
MAX_IN_FLIGHT = 1000
# How long a closing connection waits for a channel's queued methods and commits.
SHUTDOWN_WAIT_S = 30.0


class AMQPChannel:
    """An open channel of one connection."""

    def __init__(self, conn: AMQPConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.state = ChannelState(number, conn.session, conn.settings)
        # Acks of fresh leases are then queued for the next group commit (AMQP acks have
        # no reply anyway); a late failure closes the channel at its next operation.
        self.state.now_ms = conn.engine.clock.now_ms
        self.inbox: asyncio.Queue[Any] = asyncio.Queue(maxsize=MAX_IN_FLIGHT)
        self.closing = False  # sent Channel.Close after an error; awaiting CloseOk
        self.finished = False
        self.confirm = False
        self.last_queue = ""
        self._publish_seq = 0
        self._next_confirm = 1
        self._outcomes: dict[int, tuple[bool, Any]] = {}
        self._flush_scheduled = False
        self._publishes: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._lock = asyncio.Lock()  # fetch-and-write vs cancel/close
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._waker: Any = None
        self._stopping = False
        self._delivered_at: dict[int, float] = {}  # unacked delivery tag -> loop time sent
        self._timeout_task: asyncio.Task[None] | None = None
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def _run(self, steps: Steps) -> Any:
        return await drive_async(steps, self.conn.engine.run_async, self.conn.engine.post)

    # --- the worker ---------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            item = await self.inbox.get()
            if item is None:
                return
            method, content = item
            try:
                if self.closing or self.finished:
                    await self._while_closing(method)
                elif isinstance(method, commands.Basic.Publish):
                    await self._start_publish(method, content)
                else:
                    await self._settle_publishes()
                    if not (self.closing or self.finished):
                        await self._handle(method)
            except errors.ChannelClosedByBroker as exc:
                await self.fail(exc, method)
            except Exception as exc:
                if not isinstance(exc, Fault | errors.MqstoreError | TypeError | ValueError):
                    log.exception("channel %s: %s failed", self.number, method.name)
                self.conn.fail(fault_for(exc, method))
            if self.finished:
                return

    async def _while_closing(self, method: Any) -> None:
        """After Channel.Close the spec discards everything but Close and CloseOk."""
        if isinstance(method, commands.Channel.Close):
            self.conn.write(framing.method_frame(self.number, commands.Channel.CloseOk()))
            self.finish()
        elif isinstance(method, commands.Channel.CloseOk):
            self.finish()

    async def fail(self, exc: errors.ChannelClosed, method: Any) -> None:
        """A channel error: Channel.Close with the reply code, text and failing method."""
        if self.closing or self.finished:
            return
        self.closing = True
        class_id, method_id = method_ids(method)
        log.info(
            "channel %s closed: %s %s",
            self.number,
            exc.reply_code,
            exc.reply_text,
            extra={"action": "channel_error", "code": exc.reply_code, "channel": self.number},
        )
        self.conn.write(
            framing.method_frame(
                self.number,
                commands.Channel.Close(exc.reply_code, exc.reply_text[:255], class_id, method_id),
            )
        )
        await self._close_state(exc)

    async def _close_state(self, reason: errors.ChannelClosed | None) -> None:
        """Requeue the channel's unacked deliveries and drop its consumers."""
        self._stop_dispatcher()
        async with self._lock:
            try:
                await self._run(self.state.close(reason))
            except errors.MqstoreError as exc:
                log.warning("channel %s: close failed: %s", self.number, exc)

    def finish(self) -> None:
        """The channel number is free again."""
        if not self.finished:
            self.finished = True
            self.conn.channel_finished(self)
            if not self.inbox.full():
                self.inbox.put_nowait(None)  # else the worker sees ``finished`` after an item

    async def shutdown(self) -> None:
        """The connection is going away: run what the client sent before it went (an ack
        just before Connection.Close must count), let in-flight publishes commit, stop the
        tasks. The session's close then requeues whatever is still unacked."""
        self._stop_dispatcher()
        if not self.worker.done():
            try:
                await asyncio.wait_for(self.inbox.put(None), SHUTDOWN_WAIT_S)
                await asyncio.wait_for(asyncio.shield(self.worker), SHUTDOWN_WAIT_S)
            except (TimeoutError, asyncio.CancelledError):
                pass
        self._stopping = True
        self.finished = True
        self._stop_dispatcher()
        self.state.is_open = False
        if self._dispatcher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._dispatcher), 10)
            except (TimeoutError, asyncio.CancelledError, Exception):
                pass
        if self._publishes:
            await asyncio.wait(list(self._publishes), timeout=SHUTDOWN_WAIT_S)
        if not self.worker.done():
            self.worker.cancel()

    # --- publishing -----------------------------------------------------------------------

    async def _start_publish(self, method: Any, content: tuple[Any, bytes]) -> None:
        if method.immediate:
            raise Fault(540, "NOT_IMPLEMENTED - immediate=true", 60, 40)
        if isinstance(content, BaseException):
            raise content  # refused while it arrived (too large)
        props, body = content
        seq = 0
        if self.confirm:
            self._publish_seq += 1
            seq = self._publish_seq
        steps = self.state.basic_publish(
            method.exchange,
            method.routing_key,
            body,
            props,
            method.mandatory,
            amqp_properties=props.amqp_encoded,
        )
        await self._slots.acquire()
        # Validated and queued on the engine now, before anything else of this channel
        # runs (publishes are stored in the order they arrived) and a loop iteration sooner
        # than from the task's first step; the task awaits the commit.
        try:
            pending, early = submit(steps, self.conn.engine.run_async)
        except BaseException:
            self._slots.release()
            raise
        task = asyncio.get_running_loop().create_task(
            self._publish(steps, pending, early, seq, method)
        )
        self._publishes.add(task)
        task.add_done_callback(self._publishes.discard)

    async def _publish(self, steps: Steps, pending: Any, early: Any, seq: int, method: Any) -> None:
        try:
            if pending is None:
                returned = early  # no store call: joined an open transaction
            else:
                returned = await drive_async(
                    steps, self.conn.engine.run_async, self.conn.engine.post, pending=pending
                )
            outcome = (True, returned)
        except errors.ChannelClosedByBroker as exc:
            await self.fail(exc, method)
            return
        except errors.NackError:
            # A full queue refused it (x-overflow reject-publish): Basic.Nack under
            # confirms; without confirms RabbitMQ drops it silently, and so do we.
            if not seq:
                return
            outcome = (False, None)
        except errors.StoreError as exc:
            log.error("publish failed: %s", exc, extra={"action": "publish_failed"})
            if not seq:
                self.conn.fail(fault_for(exc, method))
                return
            outcome = (False, None)
        except Exception as exc:
            if not isinstance(exc, errors.MqstoreError):
                log.exception("publish on channel %s failed", self.number)
            self.conn.fail(fault_for(exc, method))
            return
        finally:
            self._slots.release()
        if self.closing or self.finished:
            return
        if not seq:
            if outcome[1] is not None:
                self._write_return(outcome[1])
            return
        self._outcomes[seq] = outcome
        if not self._flush_scheduled:
            # Flush after every publish of this commit has recorded its outcome: the
            # commit's futures resolve together, so one Ack(multiple) covers the batch.
            self._flush_scheduled = True
            self.conn.loop.call_soon(self._flush_confirms)

    def _flush_confirms(self) -> None:
        """Send the confirms that are due, in publish order: one Ack(multiple) for each run
        of committed publishes, a Return before the Ack that covers it."""
        self._flush_scheduled = False
        if self.closing or self.finished:
            return
        acked = 0
        count = 0
        while self._next_confirm in self._outcomes:
            tag = self._next_confirm
            ok, returned = self._outcomes.pop(tag)
            self._next_confirm += 1
            if returned is not None:
                self._write_return(returned)
            if ok:
                acked, count = tag, count + 1
                continue
            if acked:
                self._write_ack(acked, count)
                acked, count = 0, 0
            self.conn.write(
                framing.method_frame(self.number, commands.Basic.Nack(tag, False, False))
            )
        if acked:
            self._write_ack(acked, count)

    def _write_ack(self, tag: int, count: int) -> None:
        self.conn.write(framing.method_frame(self.number, commands.Basic.Ack(tag, count > 1)))

    def _write_return(self, returned: Any) -> None:
        method = returned.method
        frame = framing.Return(
            method.reply_code, method.reply_text, method.exchange, method.routing_key
        )
        props = framing.encode_properties(returned.properties)
        self.conn.write(
            framing.content_frames(self.number, frame, props, returned.body, self.conn.frame_max)
        )

    async def _settle_publishes(self) -> None:
        if self._publishes:
            await asyncio.wait(list(self._publishes))

    # --- synchronous methods --------------------------------------------------------------

    def _reply(self, method: Any, reply: Any) -> None:
        if not getattr(method, "nowait", False):
            self.conn.write(framing.method_frame(self.number, reply))

    def _queue(self, name: str) -> str:
        """The spec's "empty queue name means the channel's last declared queue"."""
        if name:
            return name
        if not self.last_queue:
            raise errors.NotFoundError("NOT_FOUND - no previously declared queue")
        return self.last_queue

    async def _handle(self, m: Any) -> None:
        state = self.state
        name = m.name
        if name == "Basic.Ack":
            await self._run(state.basic_ack(m.delivery_tag, m.multiple))
            self._wake.set()
        elif name == "Basic.Reject":
            await self._run(state.basic_reject(m.delivery_tag, m.requeue))
            self._wake.set()
        elif name == "Basic.Nack":
            await self._run(state.basic_nack(m.delivery_tag, m.multiple, m.requeue))
            self._wake.set()
        elif name == "Basic.Get":
            await self._get(m)
        elif name == "Basic.Consume":
            await self._consume(m)
        elif name == "Basic.Cancel":
            async with self._lock:
                await self._run(state.basic_cancel(m.consumer_tag))
            self._reply(m, commands.Basic.CancelOk(m.consumer_tag))
        elif name == "Basic.Qos":
            await self._run(state.basic_qos(m.prefetch_size, m.prefetch_count, m.global_))
            self._reply(m, commands.Basic.QosOk())
            self._wake.set()
        elif name in ("Basic.Recover", "Basic.RecoverAsync"):
            if not m.requeue:
                raise Fault(540, "NOT_IMPLEMENTED - requeue=false")
            async with self._lock:
                await self._run(state.basic_recover(True))
            if name == "Basic.Recover":
                self._reply(m, commands.Basic.RecoverOk())
            self._wake.set()
        elif name == "Queue.Declare":
            result = await self._run(
                state.queue_declare(
                    m.queue, m.passive, m.durable, m.exclusive, m.auto_delete, m.arguments
                )
            )
            ok = result.method
            self.last_queue = ok.queue
            self._reply(m, framing.DeclareOk(ok.queue, ok.message_count, ok.consumer_count))
        elif name == "Queue.Bind":
            queue = self._queue(m.queue)
            await self._run(state.queue_bind(queue, m.exchange, m.routing_key, m.arguments))
            self._reply(m, commands.Queue.BindOk())
        elif name == "Queue.Unbind":
            queue = self._queue(m.queue)
            await self._run(state.queue_unbind(queue, m.exchange, m.routing_key, m.arguments))
            self._reply(m, commands.Queue.UnbindOk())
        elif name == "Queue.Purge":
            result = await self._run(state.queue_purge(self._queue(m.queue)))
            self._reply(m, commands.Queue.PurgeOk(result.method.message_count))
        elif name == "Queue.Delete":
            result = await self._run(
                state.queue_delete(self._queue(m.queue), m.if_unused, m.if_empty)
            )
            self._reply(m, commands.Queue.DeleteOk(result.method.message_count))
        elif name == "Exchange.Declare":
            await self._run(
                state.exchange_declare(
                    m.exchange,
                    m.exchange_type,
                    m.passive,
                    m.durable,
                    m.auto_delete,
                    m.internal,
                    m.arguments,
                )
            )
            self._reply(m, commands.Exchange.DeclareOk())
        elif name == "Exchange.Delete":
            await self._run(state.exchange_delete(m.exchange, m.if_unused))
            self._reply(m, commands.Exchange.DeleteOk())
        elif name == "Confirm.Select":
            if state.tx is not None:
                raise errors.PreconditionFailedError(
                    "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
                )
            self.confirm = True
            self._reply(m, commands.Confirm.SelectOk())
        elif name == "Channel.Flow":
            if not m.active:
                raise Fault(540, "NOT_IMPLEMENTED - active=false")
            self._reply(m, commands.Channel.FlowOk(True))
        elif name == "Channel.Close":
            await self._close_state(errors.ChannelClosedByClient(m.reply_code, m.reply_text))
            self.conn.write(framing.method_frame(self.number, commands.Channel.CloseOk()))
            self.finish()
        elif name == "Channel.CloseOk":
            pass  # nothing of ours to confirm
        elif name == "Tx.Select":
            if self.confirm:  # RabbitMQ checks this before anything else about Tx.Select
                raise errors.PreconditionFailedError(
                    "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
                )
            state.tx_select(nested_error=False)  # a repeated select is harmless
            self._reply(m, commands.Tx.SelectOk())
        elif name == "Tx.Commit":
            await self._tx_commit(m)
        elif name == "Tx.Rollback":
            if state.tx is None:
                raise errors.PreconditionFailedError(
                    "PRECONDITION_FAILED - channel is not transactional"
                )
            state.tx_rollback(keep_open=True)
            self._reply(m, commands.Tx.RollbackOk())
            self._wake.set()
        elif name == "Exchange.Bind":
            await self._run(
                state.exchange_bind(m.destination, m.source, m.routing_key, m.arguments)
            )
            self._reply(m, commands.Exchange.BindOk())
        elif name == "Exchange.Unbind":
            await self._run(
                state.exchange_unbind(m.destination, m.source, m.routing_key, m.arguments)
            )
            self._reply(m, commands.Exchange.UnbindOk())
        else:
            raise Fault(503, f"COMMAND_INVALID - unexpected method {name} on a channel")

    async def _tx_commit(self, m: Any) -> None:
        """Tx.Commit: the channel's acks and publishes since the last commit, stored in ONE
        store transaction (mqstore.txn); returns go out before Tx.CommitOk, as RabbitMQ's."""
        if self.state.tx is None:
            raise errors.PreconditionFailedError(
                "PRECONDITION_FAILED - channel is not transactional"
            )
        try:
            returned = await self._run(self.state.tx_commit(keep_open=True))
        except errors.NackError as exc:
            # A full reject-publish queue refused a publish: nothing was committed.
            raise errors.PreconditionFailedError(f"PRECONDITION_FAILED - {exc}") from None
        for message in returned:
            self._write_return(message)
        self._reply(m, commands.Tx.CommitOk())
        self._wake.set()

    async def _get(self, m: Any) -> None:
        queue = self._queue(m.queue)
        method, props, body = await self._run(self.state.basic_get(queue, m.no_ack))
        if method is None:
            self.conn.write(framing.method_frame(self.number, commands.Basic.GetEmpty()))
            return
        frame = framing.GetOk(
            method.delivery_tag,
            method.redelivered,
            method.exchange,
            method.routing_key,
            method.message_count,
        )
        raw = framing.encode_properties(props, method.delivery_count)
        self.conn.write(framing.content_frames(self.number, frame, raw, body, self.conn.frame_max))
        if not m.no_ack:
            self._delivered_at[method.delivery_tag] = self.conn.loop.time()

    async def _consume(self, m: Any) -> None:
        queue = self._queue(m.queue)
        # An empty tag is the server's to choose, and RabbitMQ's look like amq.ctag-<22>.
        tag = m.consumer_tag or "amq.ctag-" + secrets.token_urlsafe(16)
        tag = await self._run(
            self.state.basic_consume(queue, None, m.no_ack, m.exclusive, tag, m.arguments)
        )
        # No await between the consumer's registration and this reply: ConsumeOk is on the
        # wire before the dispatcher can deliver anything to it.
        self._reply(m, commands.Basic.ConsumeOk(tag))
        self._start_dispatcher()

    def check_consumer_timeout(self, now: float) -> None:
        """As RabbitMQ: a delivery unacknowledged past its queue's consumer timeout
        (``x-consumer-timeout``, default 30 min) closes the channel with 406, so a late ack
        can never land; the close requeues it."""
        if self.closing or self.finished or not self._delivered_at:
            return
        unacked = self.state.unacked
        for tag, sent in list(self._delivered_at.items()):
            item = unacked.get(tag)
            if item is None:
                del self._delivered_at[tag]
            elif item.consumer_timeout_ms and (now - sent) * 1000 > item.consumer_timeout_ms:
                error = errors.PreconditionFailedError(
                    f"PRECONDITION_FAILED - delivery acknowledgement on channel {self.number} "
                    f"timed out. Timeout value used: {item.consumer_timeout_ms} ms. This "
                    "timeout value can be configured, see consumers doc guide to learn more"
                )
                self._timeout_task = self.conn.loop.create_task(self.fail(error, None))
                return

    # --- dispatch -------------------------------------------------------------------------

    def _start_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            loop = asyncio.get_running_loop()
            wake = self._wake

            def waker() -> None:
                loop.call_soon_threadsafe(wake.set)

            self._waker = waker
            self.conn.engine.add_waker(waker)
            self._dispatcher = loop.create_task(self._dispatch_loop())
        self._wake.set()

    def _stop_dispatcher(self) -> None:
        if self._waker is not None:
            self.conn.engine.remove_waker(self._waker)
            self._waker = None
        self._stopping = True
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        self._stopping = False
        state = self.state
        while state.is_open and state.consumers and not self._stopping:
            self._wake.clear()
            async with self._lock:
                if self._stopping or not state.consumers:
                    break
                try:
                    deliveries = await self._run(state.fetch())
                except errors.MqstoreError as exc:
                    log.warning("channel %s: fetch failed: %s", self.number, exc)
                    deliveries = []
                    await asyncio.sleep(0.1)
                for consumer in state.broker_cancelled:
                    if self.conn.cancel_notify:
                        cancel = commands.Basic.Cancel(consumer.tag, nowait=True)
                        self.conn.write(framing.method_frame(self.number, cancel))
                state.broker_cancelled.clear()
                frame_max = self.conn.frame_max
                for _consumer, method, props, body in deliveries:
                    frame = framing.Deliver(
                        method.consumer_tag,
                        method.delivery_tag,
                        method.redelivered,
                        method.exchange,
                        method.routing_key,
                    )
                    raw = framing.encode_properties(props, method.delivery_count)
                    self.conn.write(
                        framing.content_frames(self.number, frame, raw, body, frame_max)
                    )
                    if method.delivery_tag in state.unacked:
                        self._delivered_at[method.delivery_tag] = self.conn.loop.time()
            if deliveries:
                await self.conn.drain()
            else:
                await self._wake.wait()
        if self._waker is not None:
            self.conn.engine.remove_waker(self._waker)
            self._waker = None
