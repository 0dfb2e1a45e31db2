"""The worker process that aggregates a `materialize`'s first archives ahead of its run (aggregate.py): what
it gives is what the run would aggregate, and whatever it cannot give the run aggregates itself."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from binance_assets.aggregate import AheadKey, AheadWorker, aggregate_archive, aggregating_ahead, taken_ahead
from binance_assets.bars import Aggregation
from binance_assets.markets import MARKETS, DatasetName
from binance_assets_tests.archives import publish, publish_uncovered, uncovered_ids
from binance_assets_tests.helpers import DAYS, Cli, assert_bars_match

UM = MARKETS["um"]


def key_of(root: Path, dataset: DatasetName, day: str, ticker: str = "BTCUSDT") -> tuple[AheadKey, Path]:
    key = UM.archive_key(dataset, ticker, day)
    path = root / key
    return AheadKey("um", ticker, key, hashlib.sha256(path.read_bytes()).hexdigest()), path


def in_process(key: AheadKey, path: Path, dataset: DatasetName) -> Aggregation:
    return aggregate_archive(path, UM, dataset, key.ticker, Path(key.key).name)


def assert_same(got: Aggregation | None, expected: Aggregation) -> None:
    assert got is not None
    for name in ("bars", "days", "gaps"):
        assert getattr(got, name).equals(getattr(expected, name), check_metadata=True), name


def test_the_worker_gives_what_the_run_would_aggregate(tmp_path: Path) -> None:
    days = DAYS[:2]
    trades = publish(tmp_path, "um", "BTCUSDT", days, trades_per_day=3_000, datasets=("trades", "aggTrades"))
    publish_uncovered(
        tmp_path, "um", "BTCUSDT", days[1], trades, uncovered_ids(trades, days[1]), count_uncovered=False
    )
    jobs = [
        (*key_of(tmp_path, dataset, str(day)), dataset) for day in days for dataset in ("trades", "aggTrades")
    ]

    with aggregating_ahead() as worker:
        for key, path, dataset in jobs:
            worker.submit(key, path, dataset)
        taken = {key: taken_ahead(key) for key, _, _ in jobs}

    for key, path, dataset in jobs:
        expected = in_process(key, path, dataset)
        assert_same(taken[key], expected)
    assert taken[jobs[-1][0]].gaps.num_rows > 0  # type: ignore[union-attr]  # the gaps travel too


def test_what_the_worker_cannot_give_is_none(tmp_path: Path) -> None:
    days = DAYS[:3]
    publish(tmp_path, "um", "BTCUSDT", days)
    (good, good_path), (bad, bad_path), (late, late_path) = (key_of(tmp_path, "trades", str(d)) for d in days)
    data = bytearray(bad_path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a corrupt deflate stream: the worker fails on it, the run reports it
    bad_path.write_bytes(bytes(data))
    bad = bad._replace(sha256=hashlib.sha256(bytes(data)).hexdigest())

    with aggregating_ahead() as worker:
        worker.submit(bad, bad_path, "trades")
        worker.submit(good, good_path, "trades")
        assert taken_ahead(bad) is None
        assert taken_ahead(good._replace(sha256="0" * 64)) is None  # other content: not this archive
        assert_same(taken_ahead(good), in_process(good, good_path, "trades"))  # after a failure, it goes on
        assert taken_ahead(good) is None  # taken once
        assert taken_ahead(late) is None  # never submitted
        worker.finish()
        worker.submit(late, late_path, "trades")  # after finish: not taken
        assert taken_ahead(late) is None
    assert taken_ahead(good) is None  # no worker


def test_a_worker_that_dies_leaves_its_archives_to_the_run(tmp_path: Path) -> None:
    publish(tmp_path, "um", "BTCUSDT", DAYS[:2], trades_per_day=20_000)
    jobs = [key_of(tmp_path, "trades", str(day)) for day in DAYS[:2]]
    worker = AheadWorker()
    try:
        worker._process.kill()  # as the OOM killer would, before or while it works
        for key, path in jobs:
            worker.submit(key, path, "trades")
        assert [worker.take(key) for key, _ in jobs] == [None, None]
    finally:
        worker.close()
    assert not worker._directory.exists()


_SPIED = """
import sys
from binance_assets.aggregate import AheadWorker
from binance_assets.cli import main, warm_up

warm_up.AHEAD_MIN_BYTES = 0  # small archives: a worker all the same

taken, take = [], AheadWorker.take

def spy(self, key):
    aggregation = take(self, key)
    if aggregation is not None:
        taken.append(key.key)
    return aggregation

AheadWorker.take = spy
code = main(sys.argv[1:])
print("TAKEN", *taken, file=sys.stderr)
sys.exit(code)
"""


def test_materialize_takes_the_worker_s_aggregations(cli: Cli, vision_root: Path) -> None:
    days = DAYS[:3]
    trades = publish(vision_root, "um", "BTCUSDT", days, trades_per_day=2_000)

    result = subprocess.run(
        [sys.executable, "-c", _SPIED, "materialize", "--market", "um", "--ticker", "BTCUSDT",
         "--start", str(days[0]), "--end", str(days[-1]), "--no-retries"],
        env=cli.env, cwd=cli.home.parent, capture_output=True, text=True, timeout=180,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    label, *taken = result.stderr.splitlines()[-1].split()
    keys = [UM.archive_key("trades", "BTCUSDT", str(day)) for day in days]
    assert label == "TAKEN" and taken and taken == keys[: len(taken)]  # those done before the run began
    assert_bars_match(cli.store_url, {"BTCUSDT": trades}, days[0], days[-1])
