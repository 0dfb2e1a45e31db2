"""client.py: URLs, the embedded store's inter-process lock, one engine path per process.

Child processes are spawned (not forked: chDB's engine must not be inherited) and run the module-level
helpers below; this module imports no dagster so that they start quickly.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from binance_assets.clickhouse.client import describe_url, lock_file_for, open_client, validate_url
from binance_assets.clickhouse.errors import StoreBusyError
from binance_assets.clickhouse.store import Store
from binance_assets.clickhouse.tables import BARS_TABLE, Slice
from binance_assets_tests.rows import bars_of_day

SPAWN = multiprocessing.get_context("spawn")


def _replace_day(url: str, ticker: str, day: dt.date, n: int) -> None:
    with Store(url).open() as store:
        store.delete(BARS_TABLE, Slice("spot", ticker, frozenset([day])))
        store.insert(BARS_TABLE, bars_of_day(ticker, day, n))


def _count(url: str, ticker: str, days: list[dt.date]) -> int:
    with Store(url).open() as store:
        return store.count(BARS_TABLE, Slice("spot", ticker, frozenset(days)))


def _hold_store(url: str, opened: Event, seconds: float) -> None:
    """Child: write a day, then keep the store open for a while."""
    with Store(url).open() as store:
        store.insert(BARS_TABLE, bars_of_day("HOLDUSDT", dt.date(2024, 1, 1), 7))
        opened.set()
        time.sleep(seconds)


def _write_days(url: str, ticker: str, start: Event) -> None:
    """Child: replace ten days of one ticker, one open-write-close per day."""
    start.wait(30)
    for offset in range(10):
        _replace_day(url, ticker, dt.date(2024, 1, 1) + dt.timedelta(days=offset), 100 + offset)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"chdb://{tmp_path / 'stores' / 'clickhouse'}"


def test_describe_url_hides_the_password() -> None:
    assert describe_url("https://reader:s%40cret@ch.example:8443") == "https://reader:***@ch.example:8443"
    assert describe_url("http://ch:8123") == "http://ch:8123"
    assert describe_url("chdb:///var/lib/store") == "chdb:///var/lib/store"


@pytest.mark.parametrize(
    "bad", ["chdb://relative/path", "clickhouse://h:9000", "http://:8123", "http://h:port"]
)
def test_validate_url_rejects_other_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="expected chdb:///abs/path or http"):
        validate_url(bad)


def test_lock_file_sits_next_to_the_store_whose_parent_is_created(url: str, tmp_path: Path) -> None:
    with open_client(url) as client:
        assert client.command("SELECT 1") == 1
    assert lock_file_for(tmp_path / "stores" / "clickhouse") == tmp_path / "stores" / "clickhouse.lock"
    assert (tmp_path / "stores" / "clickhouse.lock").exists()
    assert (tmp_path / "stores" / "clickhouse").is_dir()


def test_the_embedded_engine_compiles_no_expressions_on_any_open(url: str) -> None:
    """chDB keeps ClickHouse's JIT counts across opens but not the code: each later open compiled again."""
    jit = "SELECT getSetting('compile_expressions'), getSetting('compile_aggregate_expressions'), "
    jit += "getSetting('compile_sort_description')"
    for _ in range(2):
        with open_client(url) as client:
            assert client.query(jit).result_rows == [(False, False, False)]


def test_a_second_process_waits_until_the_first_releases(url: str) -> None:
    opened = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_store, args=(url, opened, 1.5))
    holder.start()
    try:
        assert opened.wait(60), "child did not open the store"
        started = time.monotonic()
        assert _count(url, "HOLDUSDT", [dt.date(2024, 1, 1)]) == 7  # waited, then saw the child's rows
        assert time.monotonic() - started > 0.5
    finally:
        holder.join(60)
    assert holder.exitcode == 0


def test_lock_timeout_raises_store_busy_naming_the_lock_file(url: str, tmp_path: Path) -> None:
    opened = SPAWN.Event()
    holder = SPAWN.Process(target=_hold_store, args=(url, opened, 1.0))
    holder.start()
    try:
        assert opened.wait(60), "child did not open the store"
        message = r"could not lock .*clickhouse\.lock within 0\.3 s"
        with pytest.raises(StoreBusyError, match=message) as busy, open_client(url, lock_timeout=0.3):
            pass
        assert busy.value.lock_file == tmp_path / "stores" / "clickhouse.lock"
    finally:
        holder.join(60)


def test_two_processes_write_different_partitions_at_once(url: str) -> None:
    start = SPAWN.Event()
    writers = [SPAWN.Process(target=_write_days, args=(url, ticker, start)) for ticker in ("AUSDT", "BUSDT")]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    days = [dt.date(2024, 1, 1) + dt.timedelta(days=offset) for offset in range(10)]
    assert _count(url, "AUSDT", days) == _count(url, "BUSDT", days) == sum(range(100, 110))


def test_one_process_uses_different_stores_one_after_another(tmp_path: Path) -> None:
    first, second = f"chdb://{tmp_path / 'a'}", f"chdb://{tmp_path / 'b'}"
    _replace_day(first, "AUSDT", dt.date(2024, 1, 1), 3)
    _replace_day(second, "AUSDT", dt.date(2024, 1, 1), 5)
    _replace_day(first, "AUSDT", dt.date(2024, 1, 2), 4)
    assert _count(first, "AUSDT", [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]) == 7
    assert _count(second, "AUSDT", [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]) == 5


def test_threads_on_different_stores_take_turns(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for offset in range(3):
                _replace_day(f"chdb://{tmp_path / str(index)}", "AUSDT", dt.date(2024, 1, 1 + offset), 10)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    days = [dt.date(2024, 1, 1 + offset) for offset in range(3)]
    assert [_count(f"chdb://{tmp_path / str(index)}", "AUSDT", days) for index in range(3)] == [30] * 3


def test_nested_open_in_one_thread_is_refused_after_the_timeout(url: str) -> None:
    with open_client(url), pytest.raises(StoreBusyError), open_client(url, lock_timeout=0.1):
        pass
