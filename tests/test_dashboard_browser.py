"""The dashboard's pages in a real headless browser (Debian's chromium and chromium-driver),
against a real Redis holding real buffered entries. One browser for the whole session.

Set ``MOLLIFIER_DASHBOARD_SCREENSHOTS=docs`` to have these tests save the README's screenshots.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from dramatiq_mollifier import Mollifier, MollifierSettings
from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.gate.flags import OrgFlags
from dramatiq_mollifier.models import EntryStatus

from .cli_helpers import dead_letter
from .dashboard_helpers import TOKEN, fill, served
from .mollifier_helpers import eventually
from .servers import unavailable

SCREENSHOTS = os.environ.get("MOLLIFIER_DASHBOARD_SCREENSHOTS")
WAIT_S = 15


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        unavailable("Debian's chromium and chromium-driver are needed for the dashboard's browser tests")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(chromium)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,860")
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(browser: Any, condition: Callable[[Any], Any], what: str) -> Any:
    # A page that reloads meanwhile leaves stale or missing elements: look again, until WAIT_S.
    waiting = WebDriverWait(
        browser, WAIT_S, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
    )
    return waiting.until(condition, message=f"waited {WAIT_S} s for {what}")


def screenshot(browser: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(SCREENSHOTS) / f"dashboard-{name}.png"))


def text_of(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def test_the_overview_shows_the_buffered_depth_and_follows_it_live(
    browser: Any, buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    # Given 137 buffered messages of two tenants and a tripped env
    fill(buffer, [("acme", "prod", 120), ("globex", "dev", 17)])
    with served(redis_client, redis_url, key_prefix) as server:
        browser.get(f"{server.url}?token={TOKEN}")
        # The overview shows the depth the buffer holds
        assert text_of(browser, "depth") == "137"
        assert text_of(browser, "orgs") == "2"
        # And follows it without a reload: more is buffered, the page and its chart catch up
        fill(buffer, [("initech", "qa", 63)])
        wait_for(browser, lambda b: text_of(b, "depth") == "200", "the live depth")
        wait_for(
            browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#chart polyline.series-buffer"), "the chart"
        )
        screenshot(browser, "overview")


def test_filtering_the_tenant_table_finds_one_tenant_among_thousands(
    browser: Any, buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    fill(buffer, [(f"org-{n:04d}", ("prod", "dev", "staging")[n % 3], 1 + n % 7) for n in range(3000)])
    fill(buffer, [("needle-corp", "eu", 5)])
    with served(redis_client, redis_url, key_prefix) as server:
        browser.get(f"{server.url}tenants?token={TOKEN}&sort=depth")
        assert text_of(browser, "matches").startswith("3,001 envs")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#tenant-table tbody tr")) == 50
        screenshot(browser, "tenants")
        box = browser.find_element(By.ID, "filter")
        box.clear()
        box.send_keys("needle")
        browser.find_element(By.ID, "filter-go").click()
        wait_for(browser, lambda b: text_of(b, "matches").startswith("1 env "), "the filtered table")
        rows = browser.find_elements(By.CSS_SELECTOR, "#tenant-table tbody tr")
        assert [(r.get_attribute("data-org"), r.get_attribute("data-env")) for r in rows] == [
            ("needle-corp", "eu")
        ]
        assert rows[0].find_elements(By.TAG_NAME, "td")[2].text == "5"


def test_a_retry_from_the_page_puts_a_dead_letter_back(
    browser: Any, buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    dead_letter(buffer, "dl-1", "acme", "prod")
    dead_letter(buffer, "dl-2", "acme", "prod")
    with served(redis_client, redis_url, key_prefix) as server:
        browser.get(f"{server.url}dead-letters?token={TOKEN}")
        screenshot(browser, "dead-letters")
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-id="dl-1"]')
        row.find_element(By.TAG_NAME, "button").click()
        wait_for(browser, lambda b: "Retried 1 of 1" in b.page_source, "the retry's message")
        first, second = buffer.get("dl-1"), buffer.get("dl-2")
        assert first is not None and first.status is EntryStatus.QUEUED and first.attempts == 0
        assert second is not None and second.status is EntryStatus.FAILED
        assert buffer.depth("acme", "prod") == 1

        # Purge asks first, then deletes what is left
        browser.find_element(By.LINK_TEXT, "Purge…").click()
        wait_for(browser, lambda b: b.find_elements(By.ID, "confirm"), "the confirmation page")
        assert [e.message_id for e in buffer.failed()] == ["dl-2"]
        browser.find_element(By.ID, "confirm").click()
        wait_for(browser, lambda b: "Purged 1 dead letter" in b.page_source, "the purge's message")
        assert buffer.failed() == []


def test_a_message_lookup_and_an_org_page(
    browser: Any, buffer: MollifierBuffer, redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    dead_letter(buffer, "dl-9", "acme", "prod")
    ids = fill(buffer, [("acme", "prod", 3), ("acme", "staging", 2)])
    with served(redis_client, redis_url, key_prefix) as server:
        browser.get(f"{server.url}lookup?token={TOKEN}")
        box = browser.find_element(By.ID, "message-id")
        box.send_keys(ids[1])
        browser.find_element(By.ID, "lookup-go").click()
        wait_for(browser, lambda b: b.find_elements(By.ID, "f-status"), "the lookup's answer")
        assert text_of(browser, "f-status") == "QUEUED"
        assert text_of(browser, "f-org_id") == "acme"
        screenshot(browser, "lookup")

        browser.get(f"{server.url}tenant?org=acme")
        assert text_of(browser, "org-depth") == "5"
        envs = [
            r.get_attribute("data-env") for r in browser.find_elements(By.CSS_SELECTOR, "#env-table tbody tr")
        ]
        assert envs == ["prod", "staging"]
        assert "dl-9" in browser.page_source
        # Enrol the org from its page: the runtime flag the CLI's 'orgs enable' sets
        browser.find_element(By.XPATH, "//button[text()='Enrol']").click()
        wait_for(browser, lambda b: "runtime flag on" in b.page_source, "the enrolment's message")
        assert OrgFlags(redis_client, key_prefix=key_prefix).all() == {"acme": True}
        screenshot(browser, "tenant")


def test_pausing_from_the_page_holds_the_messages_and_resuming_releases_them(
    *,  # fixtures by name
    browser: Any,
    buffer: MollifierBuffer,
    redis_client: redis.Redis,
    redis_url: str,
    broker_url: str,
    key_prefix: str,
) -> None:
    # A worker with the Mollifier draining, as deployed, and two orgs' messages buffered
    broker = RedisBroker(url=broker_url, namespace=f"{key_prefix}-broker")
    broker.add_middleware(CurrentMessage())
    settings = MollifierSettings(
        enabled=True,
        enabled_orgs={"*"},
        redis_url=redis_url,
        key_prefix=key_prefix,
        drain_poll_interval_ms=20,
    )
    mollifier = Mollifier(settings, client=redis_client)
    broker.add_middleware(mollifier)
    processed: list[str] = []

    def record() -> None:
        message = CurrentMessage.get_current_message()
        assert message is not None
        processed.append(message.options["org_id"])

    actor = dramatiq.actor(record, actor_name="record", queue_name="work", broker=broker)
    for org in ("held-org", "other-org"):
        for _ in range(30):
            message = actor.message_with_options(org_id=org, env_id="prod")
            assert buffer.accept(message.message_id, org_id=org, env_id="prod", payload=message.encode())
    worker = dramatiq.Worker(broker, worker_threads=4, worker_timeout=50)
    try:
        with served(redis_client, redis_url, key_prefix) as server:
            # When the operator pauses held-org from its page
            browser.get(f"{server.url}tenant?org=held-org&token={TOKEN}")
            browser.find_element(By.XPATH, "//button[text()='Pause org']").click()
            wait_for(browser, lambda b: "Paused held-org" in b.page_source, "the pause's message")
            assert text_of(browser, "org-paused") == "paused"
            assert [(p.org_id, p.env_id) for p in buffer.controls.paused()] == [("held-org", None)]
            screenshot(browser, "tenant-paused")

            # Then a draining worker leaves its messages in Redis while the other org drains
            mollifier.rules.refresh()  # what every process does by itself within a second
            worker.start()
            eventually(lambda: processed.count("other-org") == 30, 30, "the other org to drain")
            assert "held-org" not in processed
            assert buffer.depth("held-org") == 30
            assert buffer.failed() == []

            # And resuming it from the page releases them
            browser.find_element(By.XPATH, "//button[text()='Resume org']").click()
            wait_for(browser, lambda b: "Resumed held-org" in b.page_source, "the resume's message")
            eventually(lambda: processed.count("held-org") == 30, 30, "the resumed org to drain")
            eventually(lambda: buffer.depth() == 0, 10, "the buffer to empty")
            assert len(processed) == 60
    finally:
        worker.stop()
        broker.close()
