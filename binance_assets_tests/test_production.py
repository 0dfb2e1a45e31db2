"""Production deployment: deploy/ (instance, image, Helm values), the daemon backfill on PostgreSQL and
the ClickHouse cluster statements.

The PostgreSQL tests run on a throwaway local server (binance_assets_tests/postgres.py), skipped only
where neither its binaries nor apt-get to install them exist.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import MagicMock

import pytest
import yaml
from clickhouse_connect.driver.client import Client
from dagster import AssetKey, AssetMaterialization, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from binance_assets.clickhouse import store as store_module
from binance_assets.clickhouse.client import open_client
from binance_assets.clickhouse.errors import SchemaError, ShardRoutingError
from binance_assets.clickhouse.io_manager import ClickHouseIOManager
from binance_assets.clickhouse.resource import ClickHouseResource
from binance_assets.clickhouse.store import OpenStore, Store, owning_shard
from binance_assets.clickhouse.tables import (
    ARCHIVES_TABLE,
    BARS_TABLE,
    LIQUIDITY_TABLE,
    SHARDING_KEY,
    SHARDING_VALUE_SQL,
    Slice,
    delete_slice_sql,
    render_sql,
)
from binance_assets.errors import SettingsError
from binance_assets.orchestration.definitions import build_resources
from binance_assets.settings import DAGSTER_INSTANCE_VARIABLES, DAGSTER_TUNING_VARIABLES, Settings
from binance_assets_tests.archives import expected_bars, publish
from binance_assets_tests.helpers import (
    BACKFILL_TAG,
    DAYS,
    RANGE_END,
    RANGE_START,
    REPO,
    TODAY,
    Cli,
    assert_bars_match,
    materialize_range,
    partitions_materialised,
    query,
    resources,
    running_daemon,
)
from binance_assets_tests.postgres import PostgresServer
from binance_assets_tests.vision_server import VisionServer

DEPLOY = REPO / "deploy"
MODULE_NAME = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


class _ReadNames(Mapping[str, str]):
    """An empty environment that records every name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def known_variables() -> set[str]:
    """Every variable settings.py reads (recorded from one load) and those it lists for the instance."""
    read = _ReadNames()
    Settings.from_env(read)
    return read.names | set(DAGSTER_INSTANCE_VARIABLES) | set(DAGSTER_TUNING_VARIABLES)


def variables_set(node: object) -> set[str]:
    """The variables a YAML document reads or sets: Dagster `{env: NAME}` sources, Kubernetes `env:` lists
    of {name, value | valueFrom} and the chart's `env:` mappings."""
    if isinstance(node, list):
        return set().union(*(variables_set(item) for item in node))
    if not isinstance(node, dict):
        return set()
    names: set[str] = set()
    for key, value in node.items():
        if key != "env":
            names |= variables_set(value)
        elif isinstance(value, str):
            names.add(value)
        elif isinstance(value, list):
            names |= {item["name"] for item in value}
        else:
            names |= set(value)
    return names


def test_production_instance_has_the_laptop_limits_and_postgres_from_the_environment() -> None:
    laptop, production = load_yaml(REPO / "dagster.yaml"), load_yaml(DEPLOY / "dagster.yaml")
    storage = ("storage", "instance_class")  # PostgreSQL; the laptop's batched SQLite storage
    assert {key: value for key, value in production.items() if key not in storage} == {
        key: value for key, value in laptop.items() if key not in storage
    }
    database = production["storage"]["postgres"]["postgres_db"]
    assert variables_set(database) == set(DAGSTER_INSTANCE_VARIABLES)
    assert database["scheme"] == "postgresql+psycopg2"  # the driver dagster-postgres installs


def test_helm_values_queue_and_record_whole_market_backfills_in_bulk() -> None:
    """Where runs are created (daemon, webserver), one planned event per asset and run; in run pods,
    materialisations written in batches; runs of the default length."""
    values = load_yaml(DEPLOY / "helm-values.yaml")
    for component in ("dagsterDaemon", "dagsterWebserver"):
        assert values[component]["env"]["DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"] == "true"
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item.get("value") for item in deployment["env"]}
    assert int(env["DAGSTER_EVENT_BATCH_SIZE"]) > 1
    assert int(env["BINANCE_MAX_DAYS_PER_RUN"]) == Settings.from_env({}).max_days_per_run


def test_helm_values_run_the_image_with_the_instance_limits() -> None:
    values, laptop = load_yaml(DEPLOY / "helm-values.yaml"), load_yaml(REPO / "dagster.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", MODULE_NAME]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = {item["name"]: item for item in deployment["env"]}
    assert env["CLICKHOUSE_URL"] == {
        "name": "CLICKHOUSE_URL",
        "valueFrom": {"secretKeyRef": {"name": "binance-assets-clickhouse", "key": "CLICKHOUSE_URL"}},
    }
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]
    assert {"cpu", "memory"} <= set(run_pod["resources"]["requests"])

    # The laptop's limits, raised for a cluster: the same tags; each market's op pool as wide as its run
    # limit; the total the markets' sum; a UI backfill may use the whole queue.
    runs, pools = laptop["concurrency"]["runs"], laptop["concurrency"]["pools"]
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True and set(concurrency) == {"enabled", "runs", "pools"}
    limits = {limit["key"]: limit for limit in concurrency["runs"]["tagConcurrencyLimits"]}
    assert [{**limit, "limit": 0} for limit in concurrency["runs"]["tagConcurrencyLimits"]] == [
        {**limit, "limit": 0} for limit in runs["tag_concurrency_limits"]
    ]
    per_market, total = limits["binance/market"]["limit"], concurrency["runs"]["maxConcurrentRuns"]
    markets = Settings.from_env({"BINANCE_MARKETS": env["BINANCE_MARKETS"]["value"]}).markets
    assert concurrency["pools"] == {"defaultLimit": per_market}
    assert total == per_market * len(markets) == limits["dagster/backfill"]["limit"]
    assert per_market > pools["default_limit"] and total > runs["max_concurrent_runs"]
    daemon = values["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["backfills"] == {
        "useThreads": laptop["backfills"]["use_threads"],
        "numWorkers": laptop["backfills"]["num_workers"],
    }
    assert daemon["runRetries"] == {
        "enabled": laptop["run_retries"]["enabled"],
        "maxRetries": laptop["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": laptop["run_retries"]["retry_on_asset_or_op_failure"],
    }
    monitoring = laptop["run_monitoring"]
    assert daemon["runMonitoring"] == {
        "enabled": monitoring["enabled"],
        "startTimeoutSeconds": 600,  # a cold image pull, not the laptop's start
        "pollIntervalSeconds": monitoring["poll_interval_seconds"],
        "freeSlotsAfterRunEndSeconds": monitoring["free_slots_after_run_end_seconds"],
    }
    assert monitoring["start_timeout_seconds"] < daemon["runMonitoring"]["startTimeoutSeconds"]
    production_db = load_yaml(DEPLOY / "dagster.yaml")["storage"]["postgres"]["postgres_db"]
    assert values["postgresql"]["postgresqlScheme"] == production_db["scheme"]


def test_the_user_deployment_sets_every_variable_the_image_instance_reads() -> None:
    """The code server loads deploy/dagster.yaml (baked into the image), not the chart's instance: each
    variable it reads is set for the user deployment, to what `postgresql:` says, but the password, which
    the chart sets from its secret (a second entry would duplicate it). Run pods load the chart's instance."""
    values = load_yaml(DEPLOY / "helm-values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    names = [item["name"] for item in deployment["env"]]
    assert len(names) == len(set(names))
    env = {item["name"]: item for item in deployment["env"]}
    assert "DAGSTER_PG_PASSWORD" not in env
    assert variables_set(load_yaml(DEPLOY / "dagster.yaml")) == set(DAGSTER_INSTANCE_VARIABLES)
    assert set(DAGSTER_INSTANCE_VARIABLES) - {"DAGSTER_PG_PASSWORD"} <= set(env)
    database = values["postgresql"]
    assert env["DAGSTER_PG_HOST"]["value"] == database["postgresqlHost"]
    assert env["DAGSTER_PG_PORT"]["value"] == str(database["service"]["port"])
    assert env["DAGSTER_PG_USER"]["value"] == database["postgresqlUsername"]
    assert env["DAGSTER_PG_DB"]["value"] == database["postgresqlDatabase"]
    assert values.get("global", {}).get("postgresqlSecretName", "dagster-postgresql-secret") == (
        "dagster-postgresql-secret"  # the secret docs/production.md creates; the chart reads its password
    )


def test_the_image_is_immutable_and_its_dependencies_locked() -> None:
    values = load_yaml(DEPLOY / "helm-values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    image = deployment["image"]
    assert re.fullmatch(r"[\w.-]+@sha256:[0-9a-f]{64}", image["tag"]), image["tag"]
    assert image["pullPolicy"] == "IfNotPresent"  # a digest never changes: nothing stale to refresh
    lock = [
        line for line in (DEPLOY / "requirements.lock").read_text().splitlines() if not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lock)
    assert all(re.fullmatch(r"[\w.-]+==[\w.+!-]+", line) for line in lock)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = [*project["dependencies"], *project["optional-dependencies"]["production"]]
    names = {re.split(r"[<>=!~;\[ ]", requirement)[0].lower() for requirement in needed}
    assert names <= {name.lower() for name in pins}, sorted(names - {n.lower() for n in pins})
    for requirement in project["optional-dependencies"]["production"]:
        name, version = requirement.split("==")
        assert pins[name] == version


def test_run_logs_are_kept_on_a_volume_the_webserver_reads() -> None:
    values = load_yaml(DEPLOY / "helm-values.yaml")
    manager = values["computeLogManager"]
    custom = manager["config"]["customComputeLogManager"]
    assert manager["type"] == "CustomComputeLogManager" and custom["class"] == "LocalComputeLogManager"
    base_dir = custom["config"]["base_dir"]
    claim = load_yaml(DEPLOY / "compute-logs-pvc.yaml")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    run_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    for pod_volumes, mounts in (
        (run_pod["podSpecConfig"]["volumes"], run_pod["containerConfig"]["volumeMounts"]),
        (values["dagsterWebserver"]["volumes"], values["dagsterWebserver"]["volumeMounts"]),
    ):
        (volume,) = pod_volumes
        assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        assert {"name": volume["name"], "mountPath": base_dir} in mounts
    assert run_pod["jobSpecConfig"]["ttlSecondsAfterFinished"] >= 86400


def test_init_runs_as_a_helm_hook_with_the_user_deployment_image_and_env() -> None:
    """deploy/init-chart: one Job, before every install and upgrade, running `binance-assets init`."""
    chart = load_yaml(DEPLOY / "init-chart" / "Chart.yaml")
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"
    template = (DEPLOY / "init-chart" / "templates" / "init-job.yaml").read_text()
    assert "helm.sh/hook: pre-install,pre-upgrade" in template
    assert 'command: ["binance-assets", "init"]' in template
    values = load_yaml(DEPLOY / "helm-values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert '(index .Values "dagster-user-deployments").deployments 0' in template
    for path in ("image.repository", "image.tag", "image.pullPolicy", "env"):
        assert f"$deployment.{path}" in template
        node: Any = deployment
        for key in path.split("."):
            node = node[key]
    assert "init" in cli_commands()
    directives = re.sub(r"^\{\{-.*\}\}\n", "", template, flags=re.MULTILINE)  # lines only of {{- ... }}
    rendered = yaml.safe_load(re.sub(r"\{\{.*?\}\}", "x", directives))
    assert rendered["kind"] == "Job" and rendered["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def cli_commands() -> set[str]:
    from binance_assets.cli.main import build_parser

    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return set(subparsers.choices)


def k8s_config(node: Any) -> Any:
    """Helm values (camelCase) as dagster-k8s config (snake_case), keys below `resources` kept."""
    if not isinstance(node, dict):
        return node
    snake = {key: re.sub(r"(?<=[a-z])([A-Z])", r"_\1", key).lower() for key in node}
    return {snake[k]: v if k in ("requests", "limits") else k8s_config(v) for k, v in node.items()}


def test_run_pods_get_the_launcher_cpu_and_the_code_server_memory_and_env() -> None:
    """dagster-k8s merges the user deployment's container context (its resources and env) over the run
    launcher's runK8sConfig, as the K8sRunLauncher does for each run pod."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    values = load_yaml(DEPLOY / "helm-values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher_config = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    launcher = K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(k8s_config(launcher_config))
    )
    location = K8sContainerContext.create_from_config(
        {"k8s": {"resources": deployment["resources"], "env": deployment["env"]}}
    )
    container = launcher.merge(location).run_k8s_config.container_config
    wanted = launcher_config["containerConfig"]["resources"]
    assert container["resources"] == wanted  # the code server's memory equals the run pods'
    assert {"cpu", "memory"} <= set(deployment["resources"]["requests"]) | set(wanted["requests"])
    assert "cpu" not in deployment["resources"]["requests"]
    assert {e["name"] for e in deployment["env"]} <= {e["name"] for e in container["env"]}


@pytest.mark.parametrize("name", ["dagster.yaml", "helm-values.yaml"])
def test_deploy_files_set_only_variables_settings_knows(name: str) -> None:
    names = variables_set(load_yaml(DEPLOY / name))
    assert names, f"deploy/{name} sets no variable"
    assert names <= known_variables(), sorted(names - known_variables())


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The (INSTRUCTION, arguments) of each stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, " ".join(arguments.split())))
    return stages


def test_dockerfile_builds_a_slim_non_root_image_without_build_tools() -> None:
    build, final = dockerfile_stages((DEPLOY / "Dockerfile").read_text())
    for stage in (build, final):
        assert stage[0][1].startswith("python:${PYTHON_VERSION}-slim"), stage[0]
    (install,) = [a for i, a in build if i == "RUN" and a.startswith("pip install")]
    assert install == 'pip install --no-cache-dir --constraint deploy/requirements.lock ".[production]"'
    assert ("COPY", "deploy/requirements.lock ./deploy/requirements.lock") in build
    assert "!deploy/requirements.lock" in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {d.split("==")[0]: d.split("==")[1] for d in extras["production"]}
    assert set(pins) == {"dagster-postgres", "dagster-k8s"} and len(set(pins.values())) == 1  # one release
    assert any("build-essential" in arguments for _, arguments in build)
    final_runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    assert "apt-get" not in final_runs and "build-essential" not in final_runs
    assert ("COPY", "--from=build /opt/venv /opt/venv") in final
    (user,) = [arguments for instruction, arguments in final if instruction == "USER"]
    assert int(user.split(":")[0]) >= 1000
    # the user has the home directory HOME names (tools write caches and configs there)
    (useradd,) = [a for i, a in final if i == "RUN" and "useradd" in a]
    (env,) = [a for i, a in final if i == "ENV"]
    home = re.search(r"--home-dir (\S+)", useradd)
    assert "--create-home" in useradd and home and f"HOME={home[1]}" in env.split()
    # Run pods are started with `dagster api execute_run` as container args: CMD, never ENTRYPOINT.
    assert not [arguments for instruction, arguments in final if instruction == "ENTRYPOINT"]
    (command,) = [json.loads(arguments) for instruction, arguments in final if instruction == "CMD"]
    assert command[:3] == ["dagster", "api", "grpc"] and command[-2:] == ["--module-name", MODULE_NAME]
    sources = [
        a.split()[0] for stage in (build, final) for i, a in stage if i == "COPY" and "--from" not in a
    ]
    assert all((REPO / source).exists() for source in sources), sources


def test_production_doc_names_existing_files_and_known_settings() -> None:
    text = (REPO / "docs" / "production.md").read_text()
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    paths = {  # file names, and paths under a top-level entry of the repository (not tags like a/b)
        span
        for span in re.findall(r"`([^`\s]+)`", prose)
        if re.fullmatch(r"[\w.-]+(/[\w.-]+)*", span)
        and (
            re.search(r"\.(yaml|py|toml|md)$", span) or ("/" in span and (REPO / span.split("/")[0]).exists())
        )
    }
    assert {"deploy/dagster.yaml", "deploy/Dockerfile", "deploy/helm-values.yaml"} <= paths
    assert sorted(p for p in paths if not (REPO / p).exists()) == []
    variables = set(re.findall(r"(?<![\w.])[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+(?![\w.])", text))
    assert {"CLICKHOUSE_URL", "CLICKHOUSE_CLUSTER", *DAGSTER_INSTANCE_VARIABLES} <= variables
    assert sorted(variables - known_variables()) == []


def test_production_instance_keeps_runs_events_and_partitions_in_postgres(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in postgres.create_database("instance").env.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    key = AssetKey(["binance", "um", "hl5s_bars"])
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        instance.add_dynamic_partitions("um_tickers", ["BTCUSDT", "ETHUSDT"])
        instance.report_runless_asset_event(AssetMaterialization(key, partition="2024-01-01|BTCUSDT"))
    with DagsterInstance.from_config(str(home)) as reopened:
        assert reopened.get_dynamic_partitions("um_tickers") == ["BTCUSDT", "ETHUSDT"]
        (record,) = reopened.fetch_materializations(key, limit=10).records
        assert record.partition_key == "2024-01-01|BTCUSDT"


@pytest.mark.slow
def test_daemon_backfill_on_each_instance(
    instance_cli: Cli, vision_server: VisionServer, vision_root: Path, tmp_path: Path
) -> None:
    """2 tickers x 35 days through `binance-assets backfill` and the real daemon in 31-day runs: one run per
    ticker-month (BackfillPolicy), January from its monthly archive, every bar exact, one materialisation
    per partition."""
    cli = instance_cli
    cli.env["BINANCE_MAX_DAYS_PER_RUN"] = "31"
    trades = {
        "BTCUSDT": publish(vision_root, "um", "BTCUSDT", DAYS, monthly=("2024-01",), seed=1),
        "ETHUSDT": publish(vision_root, "um", "ETHUSDT", DAYS, seed=2),
    }
    newest = [TODAY - dt.timedelta(days=i) for i in (2, 1)]
    for seed, ticker in enumerate(trades, 10):
        publish(vision_root, "um", ticker, newest, trades_per_day=10, seed=seed)

    # With one grace day the daily sensor asks for one (published) day per ticker.
    with running_daemon(cli, tmp_path / "daemon", BINANCE_PUBLISH_GRACE_DAYS="1"):
        submitted = cli(
            "backfill", "--market", "um", "--ticker", "BTCUSDT", "--ticker", "ETHUSDT",
            "--start", str(DAYS[0]), "--end", str(DAYS[-1]), "--wait",
        )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr + (tmp_path / "daemon" / "daemon.log").read_text()
    backfill_id, *_, summary = submitted.stdout.splitlines()
    bars = sum(len(expected_bars(frame)) for frame in trades.values())
    assert summary.startswith(
        "backfilled um: 2 tickers; ticker-days: 70 done (0 without archive), 0 failed, 0 skipped; "
        f"28,000 trades, {bars:,} bars, "
    )
    assert "backfill runs: 4 success" in submitted.stderr.splitlines()

    with cli.instance() as instance:
        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs(RunsFilter(tags={BACKFILL_TAG: backfill_id}))
        assert all(r.tags["binance/market"] == "um" for r in runs)
        succeeded = [r for r in runs if r.status == DagsterRunStatus.SUCCESS]
        assert sorted((r.tags[RANGE_START], r.tags[RANGE_END]) for r in succeeded) == [
            ("2024-01-01|BTCUSDT", "2024-01-31|BTCUSDT"),
            ("2024-01-01|ETHUSDT", "2024-01-31|ETHUSDT"),
            ("2024-02-01|BTCUSDT", "2024-02-04|BTCUSDT"),
            ("2024-02-01|ETHUSDT", "2024-02-04|ETHUSDT"),
        ]
        for name in ("hl5s_bars", "daily_liquidity"):
            partitions = partitions_materialised(instance, name, "2024")
            assert len(partitions) == len(set(partitions)) == 2 * len(DAYS)

    assert vision_server.hits("BTCUSDT-trades-2024-01.zip") >= 1
    assert vision_server.hits("BTCUSDT-trades-2024-01-15.zip") == 0
    assert_bars_match(cli.store_url, trades, DAYS[0], DAYS[-1])
    liquidity = query(
        cli.store_url,
        f"SELECT ticker, source, count() AS n FROM binance.daily_liquidity FINAL WHERE day <= '{DAYS[-1]}' "
        "GROUP BY ticker, source ORDER BY ticker, source",
    )
    assert liquidity.values.tolist() == [
        ["BTCUSDT", "daily", 4],
        ["BTCUSDT", "monthly", 31],
        ["ETHUSDT", "daily", 35],
    ]


# ClickHouse cluster (CLICKHOUSE_CLUSTER): the statements as strings, checked by ClickHouse's own parser.

JAN = [dt.date(2024, 1, day) for day in (1, 2, 3, 5)]
SPECS = {"hl5s": BARS_TABLE, "daily_liquidity": LIQUIDITY_TABLE, "archives": ARCHIVES_TABLE}


def recording_client() -> MagicMock:
    """A client that records its statements and finds no rows."""
    client = MagicMock(spec=Client)
    client.uri, client.server_version = f"http://recorder-{uuid.uuid4().hex}:8123", "26.9.2.1"
    client.command.return_value = 0
    return client


def parse(statements: list[str], tmp_path: Path) -> list[str]:
    """Each statement as ClickHouse's parser formats it (raises on a syntax error), on a chDB store."""
    with open_client(f"chdb://{tmp_path / 'parser'}") as client:
        return [client.command("SELECT formatQuery({q:String})", parameters={"q": s}) for s in statements]


@pytest.mark.parametrize(("value", "url"), [("prod cluster", "http://ch:8123"), ("prod", "")])
def test_clickhouse_cluster_is_an_identifier_and_needs_a_server(value: str, url: str, tmp_path: Path) -> None:
    env = {"CLICKHOUSE_CLUSTER": value, "CLICKHOUSE_URL": url, "DAGSTER_HOME": str(tmp_path)}
    with pytest.raises(SettingsError, match=rf"^CLICKHOUSE_CLUSTER='{value}' is invalid"):
        Settings.from_env(env)


def test_clickhouse_cluster_reaches_the_io_manager_and_the_resource() -> None:
    settings = Settings.from_env({"CLICKHOUSE_CLUSTER": "prod", "CLICKHOUSE_URL": "https://ch:8443"})
    resources = build_resources(settings)
    assert resources["clickhouse_io_manager"].clickhouse.cluster == resources["clickhouse"].cluster == "prod"
    assert Settings.from_env({}).clickhouse_cluster == ""


@pytest.mark.parametrize("table", SPECS)
def test_cluster_ddl_is_replicated_local_tables_under_distributed_ones(table: str) -> None:
    spec = SPECS[table]
    local, distributed = spec.create_statements("binance", table, "prod")
    head, _, columns_and_engine = local.partition(" (\n")
    assert head == f"CREATE TABLE IF NOT EXISTS `binance`.`{table}_local` ON CLUSTER `prod`"
    single_server = spec.ddl("binance", table).partition(" (\n")[2]
    assert columns_and_engine == single_server.replace("ENGINE = ", "ENGINE = Replicated")
    assert distributed == (
        f"CREATE TABLE IF NOT EXISTS `binance`.`{table}` ON CLUSTER `prod` AS `binance`.`{table}_local` "
        f"ENGINE = Distributed(`prod`, `binance`, `{table}_local`, cityHash64(market, ticker))"
    )
    assert {"market", "ticker"} <= {c.name for c in spec.columns}  # the sharding key's columns
    assert spec.create_statements("binance", table) == (spec.ddl("binance", table),)


def test_ensure_tables_on_a_cluster_runs_every_statement_on_cluster(tmp_path: Path) -> None:
    client = recording_client()
    OpenStore(Store("http://ch:8123", cluster="prod"), client).ensure_tables()
    statements = [call.args[0] for call in client.command.call_args_list]
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS `binance` ON CLUSTER `prod`"
    created = [
        s.split(" ON CLUSTER ")[0].removeprefix("CREATE TABLE IF NOT EXISTS ") for s in statements[1:7]
    ]
    assert created == [f"`binance`.`{t}{suffix}`" for t in SPECS for suffix in ("_local", "")]
    assert [s.split(" ADD COLUMN ")[0] for s in statements[7:]] == [
        "ALTER TABLE `binance`.`daily_liquidity_local` ON CLUSTER `prod`",
        "ALTER TABLE `binance`.`daily_liquidity` ON CLUSTER `prod`",
        "ALTER TABLE `binance`.`archives_local` ON CLUSTER `prod`",
        "ALTER TABLE `binance`.`archives` ON CLUSTER `prod`",
    ]
    assert all(" ON CLUSTER `prod`" in s for s in statements)
    formatted = parse(statements, tmp_path)
    assert "ENGINE = ReplicatedReplacingMergeTree(loaded_at)" in formatted[3]
    assert "ENGINE = Distributed(prod, binance, hl5s_local, cityHash64(market, ticker))" in formatted[2]


def test_single_server_store_keeps_plain_merge_trees(tmp_path: Path) -> None:
    with Store(f"chdb://{tmp_path / 'store'}").open() as store:
        tables = store.client.query("SELECT name, engine FROM system.tables WHERE database = 'binance'")
        engines = dict(tables.result_rows)
    assert engines == {
        "hl5s": "MergeTree",
        "daily_liquidity": "ReplacingMergeTree",
        "archives": "ReplacingMergeTree",
    }


def test_cluster_delete_goes_to_the_local_table_without_on_cluster_and_waits_for_replicas(
    tmp_path: Path,
) -> None:
    scattered = Slice("um", "BTC'USDT", frozenset(JAN))
    sql, params = delete_slice_sql("binance", "hl5s", scattered, "prod")
    assert sql == (
        "DELETE FROM `binance`.`hl5s_local` WHERE market = {market:String} AND ticker = {ticker:String}"
        " AND day IN {days:Array(Date)} SETTINGS lightweight_deletes_sync = 2"
    )
    assert params == {"market": "um", "ticker": "BTC'USDT", "days": JAN}
    single, single_params = delete_slice_sql("binance", "hl5s", scattered)
    assert single.startswith("DELETE FROM `binance`.`hl5s` WHERE") and "SETTINGS" not in single
    assert single_params == params
    (formatted,) = parse([render_sql(sql, params)], tmp_path)
    assert "ON CLUSTER" not in formatted and "lightweight_deletes_sync = 2" in formatted


def test_a_cleared_slice_on_a_cluster_is_always_deleted_never_counted() -> None:
    """A lagging replica would count 0 and the DELETE be skipped: on a cluster no count decides it."""
    client = recording_client()
    client.query.return_value.result_rows = [(1, 1, 1, "ch")]  # system.clusters: one shard, this server in it
    days = Slice("um", "BTCUSDT", frozenset(JAN[:3]))
    OpenStore(Store("http://ch:8123", cluster="prod"), client).clear(BARS_TABLE, days)
    (delete,) = client.command.call_args_list
    assert delete.args[0].startswith("DELETE FROM `binance`.`hl5s_local` WHERE market = {market:String}")
    assert delete.kwargs["parameters"]["ticker"] == "BTCUSDT"


# A run's store use on a cluster, on chDB's engine: the statements go to a real client and are recorded.
# chDB has no cluster, so `<table>_local` and `<table>` are plain tables standing for the replicated and
# Distributed ones, and system.clusters is answered by the recorder (the one thing chDB cannot say).


class RecordingClient:
    """A real client that records every statement and its settings; system.clusters answers `shards`
    ((shard_num, weight, is_local, host_name) rows). `url`: the URL the store opened it for."""

    def __init__(self, client: Client, shards: list[tuple[int, int, int, str]], url: str) -> None:
        self.client, self.shards, self.url = client, shards, url
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def command(self, cmd: str, parameters: Any = None, settings: Any = None, **options: Any) -> Any:
        self.sent.append((cmd, settings or {}))
        return self.client.command(cmd, parameters=parameters, settings=settings, **options)

    def query(self, query: str, parameters: Any = None, **options: Any) -> Any:
        self.sent.append((query, {}))
        if "FROM system.clusters" in query:
            return SimpleNamespace(result_rows=self.shards)
        return self.client.query(query, parameters=parameters, **options)

    def raw_insert(self, table: str, column_names: Any, insert_block: Any, **options: Any) -> Any:
        self.sent.append((f"INSERT INTO {table}", options.get("settings") or {}))
        return self.client.raw_insert(table, column_names, insert_block, **options)


@pytest.fixture
def cluster_standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[RecordingClient]:
    """Every Store.open goes to one chDB store holding the cluster's table names, through a recorder; the
    recorders opened, in order."""
    url = f"chdb://{tmp_path / 'standin'}"
    with open_client(url) as client:
        client.command("CREATE DATABASE binance")
        for table, spec in SPECS.items():
            for name in (table, f"{table}_local"):
                client.command(spec.ddl("binance", name))
    opened: list[RecordingClient] = []
    open_now: list[Client] = []

    @contextmanager
    def open_standin(opened_url: str, *args: object, **kwargs: object) -> Iterator[RecordingClient]:
        if open_now:  # a second connection while one is open (a shard's replica): the same chDB client
            opened.append(RecordingClient(open_now[-1], [(1, 1, 1, "ch")], opened_url))
            yield opened[-1]
            return
        with open_client(url) as client:
            open_now.append(client)
            opened.append(RecordingClient(client, [(1, 1, 1, "ch")], opened_url))
            try:
                yield opened[-1]
            finally:
                open_now.pop()

    monkeypatch.setattr(store_module, "open_client", open_standin)
    monkeypatch.setattr(store_module, "_checked", set())
    return opened


def test_a_run_on_a_cluster_sends_no_ddl_deletes_per_shard_and_inserts_with_token_and_quorum(
    cluster_standin: list[RecordingClient],
    vision_server: VisionServer,
    instance: DagsterInstance,
    tmp_path: Path,
) -> None:
    days = [dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
    trades = publish(vision_server.root, "um", "ETHUSDT", days, seed=2)
    clickhouse = ClickHouseResource(url="http://ch:8123", cluster="prod")
    res = {
        **resources(vision_server, "chdb:///unused", tmp_path),
        "clickhouse": clickhouse,
        "clickhouse_io_manager": ClickHouseIOManager(clickhouse=clickhouse),
    }
    result = materialize_range(instance, res, "ETHUSDT", str(days[0]), str(days[-1]))
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())

    sent = [(sql, settings) for recorder in cluster_standin for sql, settings in recorder.sent]
    statements = [sql.lstrip().split()[0].upper() for sql, _ in sent]
    assert {"CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"}.isdisjoint(statements), statements
    assert not [sql for sql, _ in sent if "ON CLUSTER" in sql]
    deletes = [sql for sql, _ in sent if sql.startswith("DELETE")]
    assert {d.split(" WHERE ")[0] for d in deletes} == {
        "DELETE FROM `binance`.`hl5s_local`",
        "DELETE FROM `binance`.`daily_liquidity_local`",
    }
    assert all(d.endswith("SETTINGS lightweight_deletes_sync = 2") for d in deletes)
    assert not [sql for sql, _ in sent if sql.startswith("SELECT count() FROM `binance`.`hl5s")]
    inserts = [(sql, settings) for sql, settings in sent if sql.startswith("INSERT")]
    assert {sql for sql, _ in inserts} == {
        "INSERT INTO `binance`.`hl5s`",
        "INSERT INTO `binance`.`daily_liquidity`",
        "INSERT INTO `binance`.`archives`",
    }
    tokens = [settings["insert_deduplication_token"] for _, settings in inserts]
    assert all(tokens) and len(set(tokens)) == len(tokens)
    for _, settings in inserts:
        assert settings["insert_quorum"] == "auto" and settings["insert_quorum_parallel"] == 1
        assert settings["insert_distributed_sync"] == 1 and settings["insert_deduplicate"] == 1
    checks = [sql for sql, _ in sent if "FROM system.columns" in sql]
    assert len(checks) == 1  # once per process
    # the compressed (lz4) ArrowStream reached the engine intact
    standin = f"chdb://{tmp_path / 'standin'}"
    assert_bars_match(standin, {"ETHUSDT": trades}, days[0], days[-1])


def test_opening_a_server_store_sends_no_ddl_and_names_init_for_a_missing_table_or_column(
    cluster_standin: list[RecordingClient],
) -> None:
    with cluster_standin_client(cluster_standin) as client:
        client.command("DROP TABLE binance.archives_local")
        client.command("ALTER TABLE binance.daily_liquidity DROP COLUMN dataset")
    for store in (Store("http://ch:8123", cluster="prod"), Store("https://ch:8443")):
        store_module._checked.clear()
        with pytest.raises(SchemaError) as error, store.open():
            pass
        message = str(error.value)
        assert "\n" not in message and message.endswith(
            "run `binance-assets init` (with these settings) to create or migrate the tables"
        )
        assert "binance.daily_liquidity lacks dataset" in message
        if store.cluster:
            assert "binance.archives_local missing" in message
        sent = [sql for sql, _ in cluster_standin[-1].sent]
        assert [sql.split()[0] for sql in sent] == ["SELECT"], sent


@contextmanager
def cluster_standin_client(opened: list[RecordingClient]) -> Iterator[Client]:
    with store_module.open_client("http://unused:8123") as recorder:
        yield recorder.client
    opened.clear()


def test_a_delete_on_a_cluster_reaches_the_owning_shard(cluster_standin: list[RecordingClient]) -> None:
    """Two shards, the server connected to in shard 1: a slice of shard 2 is deleted through a replica of
    shard 2 (one connection, at the store URL's scheme, port and credentials), never on shard 1 (where it
    would delete nothing and the INSERT would double the rows)."""
    with Store("http://default:pw@ch-1:8123", cluster="prod").open(create_tables=False) as store:
        recorder = cluster_standin[-1]
        recorder.shards = [(1, 1, 1, "ch-1"), (2, 1, 0, "ch-2")]
        homes = {}
        for ticker in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"):
            value = int(store.client.command("SELECT cityHash64('um', {t:String})", parameters={"t": ticker}))
            homes[ticker] = owning_shard(value, [(1, 1), (2, 1)])
        assert set(homes.values()) == {1, 2}
        for ticker in homes:
            store.delete(BARS_TABLE, Slice("um", ticker, frozenset(JAN[:1])))
    (other,) = cluster_standin[1:]
    assert other.url == "http://default:pw@ch-2:8123"
    for client, shard in ((recorder, 1), (other, 2)):
        deletes = [params for sql, params in client.sent if sql.startswith("DELETE")]
        assert len(deletes) == list(homes.values()).count(shard)


def test_a_delete_on_an_unknown_cluster_is_refused(cluster_standin: list[RecordingClient]) -> None:
    with Store("http://ch:8123", cluster="prod").open(create_tables=False) as store:
        cluster_standin[-1].shards = []
        with pytest.raises(
            ShardRoutingError, match=r"cluster 'prod' is not in the server's system\.clusters"
        ):
            store.delete(BARS_TABLE, Slice("um", "BTCUSDT", frozenset(JAN[:1])))


def test_owning_shard_follows_the_distributed_weights() -> None:
    assert [owning_shard(v, [(1, 1), (2, 1)]) for v in range(4)] == [1, 2, 1, 2]
    assert [owning_shard(v, [(1, 2), (2, 1)]) for v in range(6)] == [1, 1, 2, 1, 1, 2]
    assert [owning_shard(v, [(1, 0), (2, 1), (3, 3)]) for v in range(4)] == [2, 3, 3, 3]


def test_sharding_value_sql_is_the_sharding_key() -> None:
    assert SHARDING_VALUE_SQL.removeprefix("SELECT ") == SHARDING_KEY.replace(
        "market", "{market:String}"
    ).replace("ticker", "{ticker:String}")


def test_init_on_a_cluster_is_idempotent_statements(tmp_path: Path) -> None:
    """Every statement `init` sends is IF NOT EXISTS (CREATE, ADD COLUMN): a second init changes nothing."""
    client = recording_client()
    OpenStore(Store("http://ch:8123", cluster="prod"), client).ensure_tables()
    statements = [call.args[0] for call in client.command.call_args_list]
    for statement in statements:
        if statement.startswith("CREATE"):
            assert statement.startswith(("CREATE DATABASE IF NOT EXISTS", "CREATE TABLE IF NOT EXISTS"))
        else:
            clauses = statement.split(" ADD COLUMN ")[1:]
            assert statement.startswith("ALTER TABLE") and clauses
            assert all(clause.startswith("IF NOT EXISTS ") for clause in clauses)
    parse(statements, tmp_path)


def test_init_on_a_server_store_is_idempotent(tmp_path: Path) -> None:
    """init twice on a real engine: the second finds everything and changes no column."""
    url = f"chdb://{tmp_path / 'store'}"
    columns = (
        "SELECT table, name, type FROM system.columns WHERE database = 'binance' ORDER BY table, position"
    )
    found = []
    for _ in range(2):
        store_module._ensured.clear()
        with Store(url).open(create_tables=False) as store:
            store.ensure_tables()
            found.append(store.client.query(columns).result_rows)
    assert found[0] == found[1] and found[0]
