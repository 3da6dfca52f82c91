"""The dashboard in a real browser (Debian's chromium, driven by Playwright): it shows the
fleet, a newly registered agent appears and an evicted one vanishes without a reload, and an
operator token can evict from the page while a reader token sees no such button (and the
server refuses it anyway). Saves a screenshot in the test's temporary directory (and, with
DASHBOARD_SCREENSHOT=path, there too: that is how docs/dashboard.png is made)."""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil

import pytest
from neural_hive_integration.proto_stubs import service_registry_pb2 as pb

from http_client import running_http, running_secured_http
from test_auth import SECRETS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
playwright_api = pytest.importorskip("playwright.async_api")
expect = playwright_api.expect
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="chromium is not installed (bash .ci/run installs it)")

FLEET = [  # (name, type, capabilities, metadata)
    ("planner-eu-1", pb.WORKER, ["python", "planning", "gpu"], {"zone": "eu-west-1a"}),
    ("planner-eu-2", pb.WORKER, ["python", "planning"], {"zone": "eu-west-1b"}),
    ("retriever-1", pb.WORKER, ["search", "embeddings"], {"zone": "eu-west-1a"}),
    ("retriever-2", pb.WORKER, ["search", "embeddings", "gpu"], {"zone": "us-east-1c"}),
    ("coder-7", pb.WORKER, ["python", "rust", "code"], {"zone": "us-east-1a"}),
    ("scout-web", pb.SCOUT, ["crawl", "http"], {"zone": "eu-west-1c"}),
    ("scout-docs", pb.SCOUT, ["crawl", "pdf"], {"zone": "us-east-1b"}),
    ("guard-policy", pb.GUARD, ["policy", "pii"], {"zone": "eu-west-1a"}),
    ("guard-rate", pb.GUARD, ["ratelimit"], {"zone": "us-east-1a"}),
    ("summariser-3", pb.WORKER, ["python", "summarise"], {"zone": "eu-west-1b"}),
    ("translator-2", pb.WORKER, ["translate", "gpu"], {"zone": "ap-south-1a"}),
    ("vision-1", pb.WORKER, ["vision", "gpu"], {"zone": "us-east-1c"}),
]


async def register_fleet(stub) -> None:
    rng = random.Random(13)
    for i, (name, agent_type, caps, meta) in enumerate(FLEET):
        await stub.Register(pb.RegisterRequest(
            agent_id=name, agent_type=agent_type, capabilities=caps,
            metadata=dict(meta, owner="team-" + "abc"[i % 3]), cluster=meta["zone"][:7],
            version=f"1.{i % 4}.{i % 7}", endpoint=f"grpc://{name}.agents.internal:7000"))
        for _ in range(3):
            rate = 0.99 - (0.45 if i == 3 else 0.2 if i in (5, 9) else rng.random() * 0.08)
            await stub.Heartbeat(pb.HeartbeatRequest(
                agent_id=f"default/{name}", telemetry=pb.AgentTelemetry(
                    success_rate=rate, avg_duration_ms=rng.uniform(20, 900),
                    total_executions=rng.randint(200, 9000))))
    for name in ("batch-a", "batch-b"):
        await stub.Register(pb.RegisterRequest(agent_id=name, agent_type=pb.WORKER,
                                               namespace="batch", capabilities=["etl"]))


@pytest.fixture
async def browser():
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        await browser.close()


def row(agent_id: str) -> str:
    return f'[data-agent-id="{agent_id}"]'


async def open_page(browser, http, token: str = "", query: str = ""):
    page = await browser.new_page(viewport={"width": 1440, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    if token:  # what the token dialog stores
        await page.add_init_script(f"sessionStorage.setItem('sr.token', {json.dumps(token)})")
    await page.goto(http.base + "/" + query)
    return page, errors


async def test_the_fleet_live_without_a_reload(browser, tmp_path):
    async with running_http("redis") as http:
        stub = http.registry.stub
        await register_fleet(stub)
        page, errors = await open_page(browser, http, query="?refresh=200")
        await page.wait_for_selector(row("default/planner-eu-1"))
        assert await page.locator(".rows .row").count() == len(FLEET)
        assert await page.text_content("#count-total") == str(len(FLEET))
        await page.wait_for_selector("#live.live")
        await page.evaluate("window.__same_page = true")

        await stub.Register(pb.RegisterRequest(agent_id="newcomer", agent_type=pb.SCOUT,
                                               capabilities=["crawl"]))
        await page.wait_for_selector(row("default/newcomer"))
        await stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/coder-7",
                                                 status=pb.UNHEALTHY))
        await page.wait_for_selector(row("default/coder-7") + '[data-status="UNHEALTHY"]')
        await stub.EvictAgents(pb.EvictRequest(agent_ids=["default/scout-docs"], reason="x"))
        await page.wait_for_selector(row("default/scout-docs"), state="detached")
        assert await page.evaluate("window.__same_page") is True  # no reload happened

        # search by capability, then the detail of one agent
        await page.fill("#f-capability", "gpu")
        await expect(page.locator(".rows .row")).to_have_count(4)
        await page.fill("#f-capability", "")
        await page.click(row("default/planner-eu-1"))
        await page.wait_for_selector("#detail:not([hidden])")
        assert "eu-west-1a" in await page.text_content("#d-meta")
        assert await page.is_visible("#evict-form")  # auth off: anyone is an operator
        # the telemetry chart: samples of the heartbeats the page saw
        chart = await page.text_content("#d-chart")
        seen = int(re.search(r"(\d+) samples?$", chart).group(1))
        for i in range(8):
            await stub.Heartbeat(pb.HeartbeatRequest(
                agent_id="default/planner-eu-1", telemetry=pb.AgentTelemetry(
                    success_rate=0.97 - 0.05 * (i % 3) - 0.02 * i,
                    avg_duration_ms=180 + 45 * i + 60 * (i % 2), total_executions=1400 + i)))
            await expect(page.locator("#d-chart")).to_contain_text(f"{seen + i + 1} samples")
        await stub.Heartbeat(pb.HeartbeatRequest(agent_id="default/guard-rate",
                                                 status=pb.DEGRADED))
        await page.wait_for_selector(row("default/guard-rate") + ".changed")
        await page.screenshot(path=str(tmp_path / "dashboard.png"))
        assert not errors, errors
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copy(tmp_path / "dashboard.png", os.environ["DASHBOARD_SCREENSHOT"])


@pytest.fixture
async def secured_http(tmp_path):
    async with running_secured_http(tmp_path) as http:
        yield http


async def test_operator_evicts_from_the_page_and_a_reader_cannot(browser, secured_http,
                                                                  tmp_path):
    http = secured_http
    page, _ = await open_page(browser, http)
    await page.wait_for_selector("#token-dialog[open]")  # no token: the page asks for one
    await page.screenshot(path=str(tmp_path / "token-dialog.png"))
    await page.close()

    page, _ = await open_page(browser, http, SECRETS["reader-all"])
    await page.goto(http.base + "/?namespace=alpha")
    await page.click(row("alpha/a1"))
    await page.wait_for_selector("#detail:not([hidden])")
    assert not await page.is_visible("#evict-form")
    status = await page.evaluate("""async () => (await fetch('/v1/evict', {method: 'POST',
        headers: {Authorization: 'Bearer ' + sessionStorage.getItem('sr.token')},
        body: JSON.stringify({agent_ids: ['alpha/a1']})})).status""")
    assert status == 403
    await page.close()

    page, errors = await open_page(browser, http, SECRETS["ops"])
    await page.goto(http.base + "/?namespace=alpha")
    await page.click(row("alpha/a1"))
    await page.fill("#e-reason", "host retired")
    await page.click("#evict-form button")
    await page.wait_for_selector(row("alpha/a1"), state="detached")
    assert not errors, errors
    assert (await http.call("GET", "/v1/agents/alpha/a1", token=SECRETS["ops"]))[0] == 404


async def test_a_thousand_agents_render_only_the_visible_rows(browser, tmp_path):
    async with running_http("embedded") as http:
        stub = http.registry.stub
        await asyncio.gather(*(stub.Register(pb.RegisterRequest(
            agent_id=f"agent-{i:04d}", agent_type=pb.WORKER, capabilities=[f"c{i % 10}"]))
            for i in range(1000)))
        page, errors = await open_page(browser, http)
        await expect(page.locator("#shown")).to_have_text("1000 agents")
        await page.screenshot(path=str(tmp_path / "thousand.png"))
        assert await page.locator(".rows .row").count() < 80  # virtualised
        await page.eval_on_selector("#body", "el => el.scrollTop = el.scrollHeight")
        await page.wait_for_selector(row("default/agent-0999"))
        await page.fill("#f-capability", "c7")
        await expect(page.locator("#shown")).to_have_text("100 of 1000 agents")
        await page.click('[data-sort="agent_id"]')  # descending
        await expect(page.locator(".rows .row").first).to_have_attribute(
            "data-agent-id", "default/agent-0997")
        assert not errors, errors
