"""The ``stockkeeper`` commands that work on the database and the channels directly,
without a running service: ``migrate``, ``audit``, ``reconcile-channels`` and
``channels resync``. Registered on the main CLI by :mod:`stockkeeper.cli`, in the
order its help lists them."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from stockkeeper.cli_common import HELP_OPTIONS, ConfigOption
from stockkeeper.cli_common import build_container as _build
from stockkeeper.cli_common import run_async as _run
from stockkeeper.cli_common import settings_from as _settings
from stockkeeper.observability.progress import progress


def migrate(config: ConfigOption = None) -> None:
    """Apply pending database migrations.

    Also done at every start. It never makes a new embedded database."""

    settings = _settings(config)

    async def main() -> None:
        container = await _build(settings, run_migrations=False)  # no connector, no new db
        try:
            from stockkeeper.store.migrate import available
            from stockkeeper.store.migrate import migrate as do_migrate

            # Under an advisory lock: a session of its own (direct, behind PgBouncer).
            async with container.session_pool.acquire() as conn:
                with progress(len(available()), "migrate", every=1) as bar:
                    applied = await do_migrate(conn, on_step=lambda _m: bar.advance())
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none"
            # The bar counts every migration in place; say which of them were new.
            typer.echo(f"migrations applied: {names} ({len(available())} in place)")
        finally:
            await container.close()

    _run(main)


def audit(config: ConfigOption = None) -> None:
    """Check the stock invariant.

    Exits 1 with a report if anything is off. It reads the existing database and never
    makes a new embedded one."""
    from stockkeeper.services.audit import STEPS
    from stockkeeper.services.audit import audit as run_audit

    settings = _settings(config)

    async def main() -> bool:
        container = await _build(settings)
        try:
            async with container.pool.acquire() as conn:
                with progress(len(STEPS), "audit", every=1) as bar:
                    report = await run_audit(conn, on_step=lambda _s: bar.advance())
            typer.echo(report.render())
            return report.clean
        finally:
            await container.close()

    if not _run(main):
        raise typer.Exit(1)


def reconcile_channels(
    channel: Annotated[
        list[str] | None, typer.Option(help="only this channel (repeat for several)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Drift repair: compare the channels' levels with ours.

    Reads every SKU's level back from the channels that can report it and, where it
    differs from ours, makes a push due (the propagator sends it)."""
    from stockkeeper.bootstrap import channel_adapter
    from stockkeeper.config import ChannelConfig

    settings = _settings(config)
    configs = settings.connectors_of(ChannelConfig)
    unknown = sorted(set(channel or []) - {c.id for c in configs})
    if unknown:
        typer.echo(f"stockkeeper: no channel named {', '.join(unknown)}", err=True)
        raise typer.Exit(2)
    chosen = [c for c in configs if not channel or c.id in channel]

    async def main() -> None:
        container = await _build(settings, uses=chosen)
        try:
            if not chosen:  # nothing to compare: say so, rather than print nothing
                typer.echo("no channels configured: nothing to reconcile")
            for cfg in chosen:
                adapter = channel_adapter(cfg, container.metrics)
                try:
                    if not adapter.can_read:
                        typer.echo(f"{cfg.id}: cannot report its levels; skipped")
                        continue
                    total = await container.propagation.sku_count()
                    with progress(total, f"reconcile {cfg.id}") as bar:
                        d = await container.propagation.reconcile(adapter, on_page=bar.advance)
                finally:
                    await adapter.aclose()
                typer.echo(
                    f"{cfg.id}: {d.checked} SKUs checked, {d.drifted} differed (pushes due), "
                    f"{d.unlisted} not listed"
                )
        finally:
            await container.close()

    _run(main)


channels_app = typer.Typer(
    help="Sales channels: push every SKU again.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)


@channels_app.command("resync")
def channels_resync(
    channel: Annotated[str, typer.Argument(help="the channel's connector id")],
    sku: Annotated[
        list[str] | None, typer.Option("--sku", help="only this SKU (repeat for several)")
    ] = None,
    every: Annotated[
        int, typer.Option("--every", min=1, help="a progress line per this many SKUs")
    ] = 500,
    config: ConfigOption = None,
) -> None:
    """Push every SKU (or the ones named) to a channel again.

    For a new channel or after a rule change: each SKU is made due with its current
    figure and pushed through the normal claim path (coalescing, the channel's rate
    limit), with a progress line per --every SKUs and a summary. What fails is retried
    by the propagator as usual."""
    from stockkeeper.bootstrap import channel_adapter
    from stockkeeper.config import ChannelConfig
    from stockkeeper.services.channel_resync import ResyncProgress, resync

    settings = _settings(config)
    chosen = [c for c in settings.connectors_of(ChannelConfig) if c.id == channel]
    if not chosen:
        typer.echo(f"stockkeeper: no channel named {channel}", err=True)
        raise typer.Exit(2)
    cfg = chosen[0]

    async def main() -> int:
        container = await _build(settings, uses=chosen)
        adapter = channel_adapter(cfg, container.metrics)
        try:
            if sys.stdout.isatty():  # a bar with count, rate and ETA; the summary after
                with progress(None, f"resync {channel}", tty=True) as bar:
                    seen = [0]

                    def tick(p: ResyncProgress) -> None:
                        bar.set_total(p.total)
                        bar.advance(p.done - seen[0])
                        seen[0] = p.done

                    done = await resync(
                        container.propagation, adapter, sku, every=every, report=tick
                    )
                typer.echo(done.text())
            else:  # a line per --every SKUs, the last one the summary
                done = await resync(
                    container.propagation,
                    adapter,
                    sku,
                    every=every,
                    report=lambda p: typer.echo(p.text()),
                )
        finally:
            await adapter.aclose()
            await container.close()
        left = done.total - done.done
        if left:
            typer.echo(f"{channel}: {left} SKUs still due (retrying: the propagator finishes them)")
        return 1 if done.dead else 0

    code = _run(main)
    if code:
        raise typer.Exit(code)
