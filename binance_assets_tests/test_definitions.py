"""The code location loads, with the assets, checks, sensors and resources each market needs."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey

from binance_assets.orchestration.definitions import build_definitions, defs
from binance_assets.settings import Settings


def test_definitions_for_every_configured_market(tmp_path: Path) -> None:
    settings = Settings.from_env({"DAGSTER_HOME": str(tmp_path), "BINANCE_MARKETS": "spot,um,cm"})
    definitions = build_definitions(settings)
    keys = set(definitions.resolve_all_asset_keys())
    for market in ("spot", "um", "cm"):
        assert AssetKey(["binance", market, "hl5s_bars"]) in keys
        assert AssetKey(["binance", market, "daily_liquidity"]) in keys
        assert definitions.resolve_sensor_def(f"{market}_ticker_sensor")
        assert definitions.resolve_sensor_def(f"{market}_daily_sensor")
        assert definitions.resolve_sensor_def(f"{market}_republished_archives_sensor")
        assert definitions.resolve_job_def(f"{market}_backfill").asset_layer.selected_asset_keys == set()
    assert {"clickhouse_io_manager", "clickhouse", "vision"} <= set(definitions.resources)
    checks = definitions.resolve_asset_graph().asset_check_keys
    assert {c.name for c in checks} == {
        "bars_well_formed",
        "liquidity_matches_bars",
        "trade_ids_continuous",
        "day_coverage",
        "sane_trades",
        "built_from_fallback",
        "matches_binance_klines",
    }
    assert len(checks) == 21
    um = definitions.resolve_assets_def(AssetKey(["binance", "um", "hl5s_bars"]))
    for spec in um.specs:  # the UI's notice on Materialize, explained where the user meets it
        assert "a multi-asset that does not support subsetting" in (spec.description or "")
        assert "um_backfill job from the Launchpad" in (spec.description or "")
    for check in um.check_specs:  # and why Execute is greyed out
        assert (check.description or "").endswith(
            "it cannot be executed on its own (the UI greys out Execute); materialise the days again to "
            "re-check them."
        ), check.name
    definitions.get_repository_def().load_all_definitions()


def test_code_location_loads_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("BINANCE_MARKETS", "um")
    loaded = defs()
    assert {k.path[1] for k in loaded.resolve_all_asset_keys()} == {"um"}


def test_bad_environment_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINANCE_MARKETS", "spot,moon")
    with pytest.raises(ValueError, match="BINANCE_MARKETS"):
        defs()
