"""The sales-channel port: what the propagator needs of a channel, whatever its wire format.

One adapter per channel type (``shopify``, ``amazon``, ``outbound_webhook``), each in its
own module, each built from its connector config by
:func:`stockkeeper.connectors.channel_registry.make_channel`. An adapter
speaks the channel's wire format through :class:`~stockkeeper.connectors.http.HttpCaller`
(our pace, timeouts, retries of 429/5xx honouring ``Retry-After``) and never touches SQL:
what it learns about a SKU (the channel's own id for it, what the channel shows) comes
back in :class:`PushOutcome` for the propagator to keep.

Failure contract of :meth:`ChannelAdapter.push`:

* the channel cannot take the call now (down, throttling past our patience, timing out):
  raise :class:`~stockkeeper.connectors.http.ConnectorUnavailable`; the whole batch is
  retried later with backoff;
* the channel refuses the whole call (a 4xx that trying again will not fix):
  raise :class:`~stockkeeper.connectors.http.ConnectorRejected`; the propagator splits
  the batch and, for a single item, dead-letters it;
* otherwise return one :class:`PushOutcome` per item, in any order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

PushStatus = Literal["ok", "unlisted", "rejected", "superseded"]

# Asked before every write of a push that is not its first try (a re-read and set, a
# throttled call sent again): which of these SKUs this push may still write. A SKU left
# out was claimed by another sender after this push's lease ran out; writing it would
# put an older figure over a newer one. The propagator renews the lease of the others.
Fence = Callable[[Sequence[str]], Awaitable[set[str]]]


@dataclass(frozen=True, slots=True)
class AtLocation:
    """A SKU's figure at one location of a channel that has several (a Shopify location):
    ``quantity`` to show there, ``previous`` what we believe it shows (None: never told)."""

    location_id: str
    quantity: int
    previous: int | None = None


@dataclass(frozen=True, slots=True)
class Push:
    """Show ``quantity`` as available for ``sku`` (our level at ``version``)."""

    sku: str
    quantity: int
    version: int
    # What we believe the channel shows now (what we last pushed, or read back); None
    # when we have never told it anything. Shopify's changeFromQuantity.
    previous: int | None = None
    # The channel's own id for the SKU, as an earlier outcome reported it (Shopify's
    # inventory item gid); None: the adapter looks it up.
    channel_ref: str | None = None
    # A channel with several locations: the figure at each (``quantity`` is their sum);
    # empty: the channel has one figure per SKU.
    locations: tuple[AtLocation, ...] = ()


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """What became of one :class:`Push`.

    ``ok``: the channel acknowledged; ``quantity`` is what it shows now.
    ``unlisted``: the channel has no listing for the SKU (not sold there); nothing to do
    until it is listed.
    ``rejected``: the channel refused this item for good; ``error`` says why.
    ``superseded``: the fence said the push is no longer ours; nothing was written after.
    ``locations`` (a push with locations, ``ok``): what each location shows now; one
    that does not stock the item is left out (``error`` names it).
    """

    sku: str
    status: PushStatus
    quantity: int | None = None
    channel_ref: str | None = None
    error: str | None = None
    locations: Mapping[str, int] | None = None


class ChannelAdapter(Protocol):
    """A sales channel we push availability to."""

    @property
    def id(self) -> str:
        """The connector id (metrics, sync state, dead letters)."""

    @property
    def can_read(self) -> bool:
        """Whether :meth:`read` can report the channel's levels (drift repair)."""

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        """Set each item's available quantity on the channel (at most ``batch_size``
        items, distinct SKUs). See the module docstring for the failure contract. An
        adapter that writes an item more than once asks ``fence`` before every write
        after the first (see :data:`Fence`)."""

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        """What the channel shows as available per SKU; None for a SKU it does not list.
        ``refs`` holds the channel's ids already known for some of the SKUs. Raises
        ``ConnectorUnavailable`` like push. Only called when :attr:`can_read`."""

    async def aclose(self) -> None: ...
