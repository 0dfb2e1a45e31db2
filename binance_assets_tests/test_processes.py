"""How our processes start and end (processes.py). The garbage collector: off while the CLI imports
Dagster; in the console script the imported objects frozen; and everything frozen at the exit of the
console script and of a process that loads the code location. One OpenBLAS thread: asked for before
NumPy's first import, in the console script and in a process that loads the code location, unless the
user chose a number."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from binance_assets.processes import importing
from binance_assets_tests.archives import publish
from binance_assets_tests.helpers import DAYS, SETTINGS_PREFIXES, Cli

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


_LOADS_THE_CODE_LOCATION = """
import atexit, gc, sys
atexit.register(lambda: print(f"LEFT {len(gc.get_objects())}", file=sys.stderr))  # runs last
from binance_assets.orchestration.definitions import defs
defs()
print(f"TRACKED {len(gc.get_objects())}", file=sys.stderr)
"""


def test_a_process_that_loads_the_code_location_exits_frozen(tmp_path: Path) -> None:
    """A run worker (or a code server) skips the interpreter's final collections."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(DAGSTER_HOME=str(tmp_path), BINANCE_MARKETS="um")
    result = subprocess.run(
        [sys.executable, "-c", _LOADS_THE_CODE_LOCATION], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    tracked, left = (int(line.split()[1]) for line in result.stderr.splitlines()[-2:])
    assert tracked > 100_000 and left < 1_000, result.stderr


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


_NUMPY_WATCHED = """
import os, sys

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and "numpy" not in sys.modules:
            print(f"NUMPY IMPORTED WITH {os.environ.get('OPENBLAS_NUM_THREADS')}", file=sys.stderr)
        return None

sys.meta_path.insert(0, Watch())
if sys.argv[1] == "console":  # a command that imports no NumPy; the process imports it as it exits
    import atexit
    from binance_assets.cli import console
    atexit.register(lambda: __import__("numpy"))
    sys.argv = ["binance-assets", "--help"]
    console()
import binance_assets.orchestration.definitions
"""


@pytest.mark.parametrize("entry", ["console", "code location"])
@pytest.mark.parametrize("chosen", [None, "2"])
def test_numpy_is_imported_with_one_blas_thread_unless_the_user_chose(entry: str, chosen: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if chosen:
        env["OPENBLAS_NUM_THREADS"] = chosen
    result = subprocess.run(
        [sys.executable, "-c", _NUMPY_WATCHED, entry], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert f"NUMPY IMPORTED WITH {chosen or 1}" in result.stderr.splitlines()
