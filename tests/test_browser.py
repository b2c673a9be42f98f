"""The Dagster UI in a real browser: Playwright (sync API) drives Debian's Chromium, headless, against ``dagster dev``
(webserver, daemon and code server) started by the test on a free loopback port, with a DAGSTER_HOME and a project
file in a temporary folder. The pipeline is set up and ingested twice through the ``connectors`` command line first
(two materializations of the table, recorded in that Dagster instance), then the browser checks:

1. the table's asset page plots the materialization metadata and lists the three asset checks, which "Execute all"
   evaluates (each succeeds on this healthy pipeline);
2. a lifecycle job (``demo__backup``: its config has no required field) launched from the Launchpad as it opens
   succeeds;
3. the orchestration sensor's page shows it running (it is by default) and lists its ticks.

Screenshots of these pages land in ``test-artifacts/browser/`` at the repository root (git-ignored); the folder is
emptied of PNGs when the module starts. A failing step leaves ``<name>-FAILED.png`` of the page it was on.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures_services import free_port, wait_for_port
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
BIN = Path(sys.executable).parent
PIPELINE, TABLE = "demo", "ticks"
LOCATION = "connectors"
#: A table fed by two finite datagen connectors; ``second`` starts paused, so two ``connectors run`` (the second
#: after ``connector ... second start``) give the table two materializations: the plots have two points.
PROJECT = """
pipelines:
  demo:
    sink: {kind: duckdb, path: demo.duckdb}
    tables:
      ticks:
        columns: {n: BIGINT, price: INTEGER}
        connectors:
          - name: first
            transport:
              name: datagen
              config: {seed: 1, plan: [{limit: 500, fields: {price: {strategy: uniform, range: [100, 1000]}}}]}
          - name: second
            paused: true
            transport:
              name: datagen
              config: {seed: 2, plan: [{limit: 300, fields: {n: {range: [1000, 2000]}}}]}
"""
#: Chromium flags: no sandbox (root in a container), no GPU, and nothing that phones home (this machine's closed
#: network refuses those connections, which slows or breaks pages).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Numeric metadata of every materialization (``connector_assets/metadata.py``), each one a plot.
PLOTTED_KEYS = ("dagster/row_count", "connectors/records")
#: Rows of the table after both ingests: 500 + 300.
ROWS = 800
CHECKS = ("hourly_volume", "parse_error_rate", "backup_age")
#: Generous for a 2-core machine shared with other work; every wait polls and returns as soon as it holds.
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_MS = 90_000


@dataclass
class DagsterUI:
    url: str
    folder: Path
    log: Path


def cli(env: dict[str, str], cwd: Path, *args: str) -> None:
    """Run ``connectors ARGS``; it must exit 0."""
    done = subprocess.run([str(BIN / "connectors"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"connectors {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"


def graphql(url: str, query: str) -> dict[str, object]:
    """POST ``query`` to the webserver's GraphQL endpoint; its ``data``."""
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer
    return answer["data"]


LOCATION_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""


def wait_for_location(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Poll the webserver until the code location has loaded; fail with its load error or the log."""
    deadline = time.monotonic() + timeout
    while True:
        entries = graphql(url, LOCATION_QUERY)["workspaceOrError"].get("locationEntries", [])
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry is not None and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"] or {}
            assert loaded.get("__typename") == "RepositoryLocation", f"code location failed to load: {loaded}"
            return
        assert process.poll() is None, f"dagster dev exited {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"code location not loaded after {timeout}s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)  # polling interval


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop ``dagster dev`` and everything it started (its own process group: webserver, daemon, code servers, run
    workers): SIGINT as Ctrl-C would, SIGKILL to the group after 10 s or when the group outlives it."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """The project set up and ingested through the command line, then ``dagster dev`` serving it."""
    folder = tmp_path_factory.mktemp("browser")
    project_file = folder / "connectors.yaml"
    project_file.write_text(textwrap.dedent(PROJECT))
    workspace = folder / "workspace.yaml"
    workspace.write_text(
        textwrap.dedent(f"""
        load_from:
          - python_module:
              module_name: connector_assets.definitions
              working_directory: {REPO}
              location_name: {LOCATION}
        """)
    )
    home = folder / "dagster_home"
    env = {**os.environ, "DAGSTER_HOME": str(home), "CONNECTORS_PROJECT_FILE": str(project_file)}
    cli(env, folder, "dagster-home", str(home))
    cli(env, folder, "setup", PIPELINE, "--confirm-prerequisites")
    cli(env, folder, "run", PIPELINE)
    cli(env, folder, "connector", PIPELINE, TABLE, "second", "start")
    cli(env, folder, "run", PIPELINE)

    port = free_port()
    log = folder / "dagster-dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its webserver, daemon, code servers and runs share its process group
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_port("127.0.0.1", port, 90, process)
        wait_for_location(url, process, log)
        graphql(url, "mutation { setNuxSeen }")  # no "Join the Dagster community" dialog over the pages
        yield DagsterUI(url, folder, log)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "the browser test needs Debian's chromium package (apt-get install chromium; .ci/run does it)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 1100})
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@contextmanager
def step(page: Page, name: str, ui: DagsterUI) -> Iterator[None]:
    """A step of a test: on failure, a screenshot ``<name>-FAILED.png`` of the page as it was, and the end of the
    ``dagster dev`` log on stdout (pytest shows it with the failure)."""
    try:
        yield
    except BaseException:
        with suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / f"{name}-FAILED.png"), timeout=5_000)
        print(f"--- {ui.log} (end) ---\n{ui.log.read_text(errors='replace')[-4000:]}")
        raise


def test_asset_page_plots_metadata_and_evaluates_its_checks(dagster_ui: DagsterUI, page: Page) -> None:
    with step(page, "asset-plots", dagster_ui):
        page.goto(f"{dagster_ui.url}/assets/{PIPELINE}/{TABLE}")
        expect(page.get_by_text("Latest materialization")).to_be_visible()
        row_count = page.get_by_text("Row count", exact=True).locator("xpath=..")
        expect(row_count).to_contain_text(str(ROWS))  # dagster/row_count of the latest materialization
        page.get_by_role("button", name="Plots").click()
        for key in PLOTTED_KEYS:
            expect(page.get_by_text(key, exact=True)).to_be_visible()
        expect(page.locator("canvas").nth(len(PLOTTED_KEYS) - 1)).to_be_visible()  # a chart per plotted key
        page.get_by_text("Metadata", exact=True).evaluate("heading => heading.scrollIntoView({block: 'start'})")
        screenshot(page, "asset-plots")

    with step(page, "asset-checks", dagster_ui):
        page.get_by_role("tab", name="Checks").click()
        expect(page.get_by_text(f"Checks ({len(CHECKS)})")).to_be_visible()
        for name in CHECKS:
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.get_by_role("button", name="Execute all").click()
        # Not Evaluated -> In Progress -> a result per check, once the run of the checks (no materialization) ended.
        results = page.get_by_text(re.compile(r"^(Succeeded|Failed|Warning|Execution failed|Skipped)$", re.IGNORECASE))
        expect(results).to_have_count(len(CHECKS), timeout=RUN_TIMEOUT_MS)
        expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(CHECKS))
        expect(page.get_by_text("Passed", exact=True)).to_be_visible()  # the selected check's latest result
        screenshot(page, "asset-checks")


def test_lifecycle_job_launched_from_the_launchpad_with_its_defaults_succeeds(
    dagster_ui: DagsterUI, page: Page
) -> None:
    job = f"{PIPELINE}__backup"  # BackupConfig: only `force`, default false; needs no connection
    with step(page, "launchpad", dagster_ui):
        page.goto(f"{dagster_ui.url}/locations/{LOCATION}/jobs/{job}/playground")
        # Whatever the editor opens with (empty or the scaffolded defaults), the config is valid as it is.
        expect(page.get_by_text("No errors", exact=True)).to_be_visible()
        launch = page.get_by_role("button", name=re.compile("launch run", re.IGNORECASE))
        expect(launch).to_be_enabled()
        screenshot(page, "launchpad")
        launch.click()

    with step(page, "launched-run", dagster_ui):
        page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}"))
        expect(page.get_by_role("link", name=job).first).to_be_visible()
        status = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
        expect(status).to_be_visible(timeout=RUN_TIMEOUT_MS)
        screenshot(page, "launched-run")
        assert status.inner_text() == "Success", f"the {job} run ended {status.inner_text()}"
        expect(page.get_by_text("STEP_SUCCESS", exact=True).first).to_be_visible()


def test_orchestration_sensor_is_running_and_lists_its_ticks(dagster_ui: DagsterUI, page: Page) -> None:
    sensor = f"{PIPELINE}__orchestration"
    with step(page, "sensor", dagster_ui):
        page.goto(f"{dagster_ui.url}/locations/{LOCATION}/sensors/{sensor}")
        running = page.get_by_role("row", name="Running", exact=True).get_by_role("checkbox")
        expect(running).to_be_checked()  # DefaultSensorStatus.RUNNING: on without anyone turning it on
        # The daemon evaluates it at once, then every ~10 s; each evaluation is a row with its logs.
        ticks = page.get_by_role("row").filter(has=page.get_by_role("button", name="View logs"))
        expect(ticks.first).to_be_visible(timeout=RUN_TIMEOUT_MS)
        screenshot(page, "sensor")
