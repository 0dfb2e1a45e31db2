"""`materialize`: one Dagster run in this process per ticker's range of days (cli/runs.py), or a preview
of them (cli/preview.py). This module imports no Dagster, so the first archives download while Dagster
loads (cli/warm_up.py)."""

from __future__ import annotations

import argparse

from binance_assets.cli.common import list_archives, parse_request
from binance_assets.cli.preview import run_preview, wants_preview
from binance_assets.cli.runner import run_all
from binance_assets.cli.warm_up import warm_up
from binance_assets.processes import importing
from binance_assets.settings import Settings


def cmd_materialize(args: argparse.Namespace, settings: Settings) -> int:
    """Run each ticker's ranges in this process, one Dagster run per range, BINANCE_PARALLEL_TICKERS
    tickers at once; no run starts after a failure. Or preview them (--plan, --dry-run)."""
    request = parse_request(args, settings)
    listed = list_archives(request, settings)
    if wants_preview(args, settings):
        return run_preview(args, request, listed, settings)
    with warm_up(request, listed, settings) as warm:
        with importing():
            from binance_assets.cli.runs import InProcessRuns  # Dagster: imported while the archives download

            runs = InProcessRuns.of(request, settings, retries=not args.no_retries, verbose=args.verbose)
        return run_all(request, settings, runs, "materialised", warm_up=warm)
