"""``stockkeeper status``: what ``GET /admin/status`` of a running instance knows, as
readable tables. It asks the running admin-api; it never opens a database of its own."""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from stockkeeper.api.auth import TOKEN_FILE
from stockkeeper.config import Settings


class StatusUnavailable(Exception):
    """The running instance could not be asked (with what to do about it)."""


def admin_url(settings: Settings) -> str:
    host = settings.api.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - a bind-all address, asked via loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.admin_port}"


def admin_token(settings: Settings) -> str:
    """An admin token from the config, else the one ``up`` generated in the data dir."""
    for token in settings.api.tokens:
        if "admin" in token.scopes:
            return token.resolve()
    path = settings.data_dir / TOKEN_FILE
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    raise StatusUnavailable(
        f"no admin token: none in api.tokens and no generated one in {path} "
        "(is this the data directory of the running instance? pass --token)"
    )


def fetch_status(url: str, token: str, timeout_s: float = 10.0) -> dict[str, Any]:
    try:
        resp = httpx.get(
            f"{url}/admin/status",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise StatusUnavailable(
            f"no stockkeeper admin-api answers at {url} ({type(exc).__name__}); "
            "is `stockkeeper up` or `stockkeeper run admin-api` running?"
        ) from None
    if resp.status_code in (401, 403):
        raise StatusUnavailable(f"{url} refused the admin token ({resp.status_code})")
    if resp.status_code != 200:
        raise StatusUnavailable(f"{url}/admin/status answered {resp.status_code}")
    doc: dict[str, Any] = resp.json()
    return doc


class _Section:
    """A heading on its own line (a table's title would wrap to the table's width)."""

    def __init__(self, title: str, table: Table) -> None:
        self.title, self.table = title, table

    def __rich_console__(self, console: Console, options: Any) -> Any:
        yield f"[bold]{self.title}[/bold]"
        if self.table.row_count:
            yield self.table
        else:
            yield "  (none)"
        yield ""


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> _Section:
    table = Table(show_edge=False)
    # The first column names the row (a queue, a channel, a connector): never cut, even
    # in the 80 columns rich assumes when printing to a file or a pipe.
    name_width = max((len(str(row[0])) for row in rows), default=0)
    table.add_column(columns[0], no_wrap=True, min_width=name_width)
    for c in columns[1:]:
        table.add_column(c)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return _Section(title, table)


def render(doc: dict[str, Any], console: Console) -> None:
    """Print the status document: one table per section, empty sections said so."""
    outbox = doc.get("outbox", {})
    broker = doc.get("broker", {})
    pipes = [
        ["broker", broker.get("kind")],
        ["outbox pending", outbox.get("pending")],
        ["outbox failed", outbox.get("failed")],
        ["oldest pending (s)", outbox.get("oldest_pending_seconds")],
    ]
    if broker.get("error"):
        pipes.insert(1, ["broker error", broker["error"]])
    console.print(_table("Pipes", ["what", "value"], pipes))
    queues = doc.get("queues") or {}
    console.print(_table("Queues", ["queue", "depth"], [[q, d] for q, d in sorted(queues.items())]))
    dead = doc.get("dead_letters") or {}
    console.print(
        _table("Open dead letters", ["queue", "open"], [[q, n] for q, n in sorted(dead.items())])
    )
    channels = doc.get("channels") or {}
    console.print(
        _table(
            "Channels",
            ["channel", "lag p50 ms", "lag p99 ms", "pending", "dead", "unlisted", "alerting"],
            [
                [
                    name,
                    _ms((ch.get("lag_ms") or {}).get("p50")),
                    _ms((ch.get("lag_ms") or {}).get("p99")),
                    ch.get("pending"),
                    ch.get("dead"),
                    ch.get("unlisted"),
                    ch.get("alerting"),
                ]
                for name, ch in sorted(channels.items())
            ],
        )
    )
    connectors = doc.get("connectors") or {}
    console.print(
        _table(
            "Polled connectors",
            ["connector", "details"],
            [[name, _flat(c)] for name, c in sorted(connectors.items())],
        )
    )
    wms = doc.get("wms") or {}
    console.print(
        _table("WMS", ["connector", "details"], [[n, _flat(w)] for n, w in sorted(wms.items())])
    )


def _ms(value: Any) -> Any:
    """A lag in whole milliseconds (the API's fractions say nothing more here)."""
    return f"{value:.0f}" if isinstance(value, int | float) else value


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    return "-" if value is None else str(value)
