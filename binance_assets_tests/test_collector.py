"""The garbage collector in a `binance-assets` process (cli/collector.py): off while Dagster is imported,
and in the console script the imported objects and, at the exit, everything frozen."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
from pathlib import Path

import pytest

from binance_assets.cli.collector import importing
from binance_assets_tests.archives import publish
from binance_assets_tests.helpers import DAYS, Cli

_WATCHED = """
import atexit, gc, sys
from binance_assets.cli import console, main

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "dagster" and "dagster" not in sys.modules:
            print(f"DAGSTER IMPORTED, COLLECTOR ON: {gc.isenabled()}", file=sys.stderr)
        return None

sys.meta_path.insert(0, Watch())
def report():
    print(f"AT EXIT: ON {gc.isenabled()} FROZEN {gc.get_freeze_count()} LEFT {len(gc.get_objects())}",
          file=sys.stderr)

atexit.register(report)
entry, sys.argv = sys.argv[1], ["binance-assets", *sys.argv[2:]]
if entry == "console":
    console()
sys.exit(main())
"""


@pytest.mark.parametrize("entry", ["console", "main"])
def test_dagster_imports_without_collecting_and_only_the_console_script_freezes(
    cli: Cli, vision_root: Path, entry: str
) -> None:
    publish(vision_root, "um", "BTCUSDT", DAYS[:1])
    result = subprocess.run(
        [sys.executable, "-c", _WATCHED, entry, "materialize", "--market", "um", "--ticker", "BTCUSDT",
         "--start", str(DAYS[0]), "--end", str(DAYS[0]), "--no-retries"],
        env=cli.env, cwd=cli.home.parent, capture_output=True, text=True, timeout=180,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "ticker-days: 1 done" in result.stdout
    assert "DAGSTER IMPORTED, COLLECTOR ON: False" in result.stderr
    at_exit = result.stderr.splitlines()[-1]
    on, frozen, left = re.fullmatch(r"AT EXIT: ON (\w+) FROZEN (\d+) LEFT (\d+)", at_exit).groups()
    assert on == "True", at_exit
    if entry == "console":  # the imports frozen after they were made, and everything at the exit
        assert int(frozen) > 100_000 and int(left) < 1_000, at_exit
    else:  # a caller of main keeps its collector
        assert int(frozen) == 0 and int(left) > 100_000, at_exit


def test_importing_restores_the_collector_as_it_was() -> None:
    frozen = gc.get_freeze_count()
    with importing():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with importing():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert gc.get_freeze_count() == frozen  # not the console script: nothing frozen
