"""The batched consumer runner's buffer: deliveries taken at once (unacked) and handed
to :meth:`~stockkeeper.messaging.consumer.Consumer.process_batch` one batch at a time,
in delivery order (D-210)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from stockkeeper.messaging.broker import Delivery, Subscription
from stockkeeper.messaging.outages import ConsumerStopped

if TYPE_CHECKING:
    from stockkeeper.messaging.consumer import Consumer


class Batcher:
    """Takes the broker's deliveries at once (they stay unacked) and hands what has
    gathered to :meth:`Consumer.process_batch`, one batch at a time, in order. The
    buffer is bounded, so the broker's prefetch (or the embedded queue's claim) waits
    when it is full."""

    def __init__(self, consumer: Consumer, bound: int) -> None:
        self._consumer = consumer
        self._buffer: asyncio.Queue[Delivery] = asyncio.Queue(bound)
        self._closing = False
        self._task = asyncio.create_task(self._run())

    async def put(self, d: Delivery) -> None:
        if self._closing:
            await d.requeue()
            return
        await self._buffer.put(d)

    async def _run(self) -> None:
        c = self._consumer
        while True:
            batch = [await self._buffer.get()]
            while len(batch) < c.batch_size and not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
            try:
                await c.process_batch(batch)
            except ConsumerStopped:
                for d in batch:
                    await d.requeue()
            except Exception:
                for d in batch:
                    await c._unrecorded(d)
            finally:
                for _ in batch:
                    self._buffer.task_done()

    def abandon(self) -> None:
        """The broker never subscribed: nothing was handed out, stop the task."""
        self._task.cancel()

    def subscription(self, inner: Subscription) -> Subscription:
        return BatchSubscription(self, inner)

    async def close(self, inner: Subscription) -> None:
        self._closing = True
        self._consumer._stopping.set()
        await self._buffer.join()  # what was handed out is settled first
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await inner.cancel()


class BatchSubscription:
    def __init__(self, batcher: Batcher, inner: Subscription) -> None:
        self._batcher = batcher
        self._inner = inner

    async def cancel(self) -> None:
        await self._batcher.close(self._inner)
