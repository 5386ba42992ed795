"""Propagation use cases: record news of a level per channel, push it, watch the lag.

The ``channel.propagation`` consumer records each ``inventory.level_changed`` per channel
(:meth:`Propagation.record`; an ``inventory.levels_changed`` of many SKUs set-based by
:meth:`Propagation.record_many`) in the transaction that marks the message processed: the
newest version wins, a change from the channel itself is not sent back to it, and
changes that arrive before the push is sent ride along with it (coalescing). Senders
claim due rows per channel (:meth:`Propagation.claim`) and hand them to
:meth:`Propagation.push_claimed`, the one place a push happens: it calls the channel's
adapter, reads its answer or its failure, and settles each push (acknowledged, unlisted,
retried after the backoff, or dead-lettered). Every push the channel acknowledges is
logged with its lag, from which :meth:`Propagation.check_lag` computes the percentiles
and the alert.

The service is one class, :class:`Propagation`, made of one part per concern:
recording (:mod:`.record`), pushing (:mod:`.push`), the lag and the status page
(:mod:`.status`) and drift repair (:mod:`.reconcile`), over the state they share
(:mod:`.base`).
"""

from __future__ import annotations

from stockkeeper.services.propagation.base import NOTIFY_CHANNEL
from stockkeeper.services.propagation.push import PROPAGATION_QUEUE, REARM, Pusher, Settled
from stockkeeper.services.propagation.reconcile import RECONCILE_PAGE, Drift, Reconciler, Sampled
from stockkeeper.services.propagation.record import LevelChange, Recorder
from stockkeeper.services.propagation.status import (
    LAG_ALERT,
    LAG_RECOVERED,
    ChannelStatus,
    StatusMonitor,
    UnlistedPage,
)

__all__ = [
    "LAG_ALERT",
    "LAG_RECOVERED",
    "NOTIFY_CHANNEL",
    "PROPAGATION_QUEUE",
    "REARM",
    "RECONCILE_PAGE",
    "ChannelStatus",
    "Drift",
    "LevelChange",
    "Propagation",
    "Sampled",
    "Settled",
    "UnlistedPage",
]


class Propagation(Recorder, Pusher, StatusMonitor, Reconciler):
    """Propagation to the sales channels: record, push, watch the lag, repair drift."""
