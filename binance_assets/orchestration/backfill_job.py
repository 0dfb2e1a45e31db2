"""``<market>_backfill``: a big backfill launched from the UI's Launchpad, light for the webserver.

The partition dialog makes the webserver build and check the selection against the market's every
partition (docs/operations.md "A big backfill from the UI"). This job's config is a few fields; its one
op, in the run worker, submits the same backfills as `binance-assets backfill` (backfills.py) through the
instance.

No ``from __future__ import annotations``: Dagster reads the op's config type from its annotation.
"""

import datetime as dt

from dagster import AssetsDefinition, Config, Failure, JobDefinition, OpExecutionContext, job, op
from pydantic import Field

from binance_assets.markets import Market
from binance_assets.orchestration.backfills import (
    ONLY_WHICH,
    Only,
    Request,
    count_of,
    request_days,
    select_keys,
    select_tickers,
    submit_backfills,
)
from binance_assets.orchestration.partition_range import run_tags
from binance_assets.read.arguments import day

REASON = "backfill_job"
"""binance/reason of the runs of the backfills this job submits (the CLI's are `cli`)."""
PRIORITY = "10"
"""dagster/priority of the job's run: the queue starts it before the backfill runs already waiting
(priority 0), as soon as a run slot is free."""


class BackfillConfig(Config):
    """What to backfill: tickers (or a filter over the registered ones) x days."""

    tickers: list[str] = Field(
        default_factory=list, description="tickers registered in the market, e.g. [BTCUSDT, ETHUSDT]"
    )
    ticker_filter: str = Field(
        default="",
        description="instead of tickers: comma-separated globs over the registered tickers, as "
        "TICKER_FILTER, e.g. '*USDT,*USDC' or '*' for every registered ticker",
    )
    start: str = Field(description="first day, YYYY-MM-DD (UTC)")
    end: str = Field(description="last day, YYYY-MM-DD (UTC), inclusive: yesterday at the latest")
    only: Only = Field(
        default="all",
        description="all: every ticker-day; missing: those not materialised (failed, or never loaded); "
        "failed: those Dagster shows failed",
    )


def checked_request(market: Market, config: BackfillConfig, registered: list[str], today: dt.date) -> Request:
    """The config as a Request, or a ValueError of one line."""
    tickers = select_tickers(market, registered, config.tickers, config.ticker_filter)
    days = request_days(market, day("start", config.start), day("end", config.end), today)
    return Request(market, tickers, days)


def build_backfill_job(market: Market, assets: AssetsDefinition) -> JobDefinition:
    """The market's backfill job; ``assets`` is the market's multi_asset (the backfills' target)."""

    @op(name=f"{market.key}_submit_backfills")
    def submit_backfills_op(context: OpExecutionContext, config: BackfillConfig) -> None:
        """Check the config, then add the backfills; their ids and sizes go to the log."""
        instance = context.instance
        registered = instance.get_dynamic_partitions(market.tickers_partition_name)
        try:
            request = checked_request(market, config, registered, dt.datetime.now(dt.UTC).date())
        except ValueError as error:
            raise Failure(description=str(error), allow_retries=False) from None
        keys = select_keys(instance, market, request.tickers, request.days, config.only)
        if config.only != "all":
            which = ONLY_WHICH[config.only]
            context.log.info(f"{sum(map(len, keys.values())):,} ticker-days {which} in Dagster")
            if not keys:
                context.log.info(f"nothing to backfill: no ticker-day of {request.describe()} is {which}")
                return
        submitted = submit_backfills(
            instance,
            assets,
            market,
            keys,
            title=f"{market.key} {request.describe()}",
            description=f"{context.job_name} run {context.run_id}",
            tags=run_tags(market, REASON),
        )
        for backfill in submitted:
            context.log.info(
                f"backfill {backfill.backfill_id}: {count_of(len(backfill.tickers), 'ticker')}, "
                f"{count_of(backfill.ticker_days, 'ticker-day')}"
            )
        context.log.info(
            f"submitted {count_of(len(submitted), 'backfill')} of {market.key} {request.describe()}, "
            f"{count_of(sum(b.ticker_days for b in submitted), 'ticker-day')}: dagster-daemon runs them"
        )

    @job(
        name=f"{market.key}_backfill",
        description=f"Backfills {market.key} tickers x days without loading the webserver: the Launchpad "
        "config names tickers (or a ticker_filter), start, end and only (all, missing, failed); the run "
        "submits the same backfills as `binance-assets backfill`, which dagster-daemon runs.",
        tags={"dagster/priority": PRIORITY},
    )
    def backfill_job() -> None:
        submit_backfills_op()

    return backfill_job
