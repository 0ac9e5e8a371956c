"""Flower's tasks page in a real headless Chromium, behind the service's basic auth.

The screenshot goes to the test's temporary folder; with PACING_TEST_UPDATE_SCREENSHOTS=1 it
also replaces docs/flower-tasks.png, the picture of the operator's guide.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.flower_stack import CYCLE_TASKS, REPO_ROOT, FlowerStack, running_flower_stack

pytestmark = [pytest.mark.browser, pytest.mark.integration]

DOCS_SCREENSHOT = REPO_ROOT / "docs" / "flower-tasks.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[FlowerStack]:
    with running_flower_stack(tmp_path) as running:
        running.wait_for_cycle_tasks()
        yield running


def test_flower_tasks_page_shows_the_pacing_tasks_with_their_summaries(
    flower: FlowerStack, chromium: webdriver.Chrome, tmp_path: Path
) -> None:
    # given: the browser sends the credentials of PACING_FLOWER_BASIC_AUTH with every request,
    # the page's own data requests included
    token = base64.b64encode(":".join(flower.auth).encode()).decode()
    chromium.execute_cdp_cmd("Network.enable", {})
    chromium.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )

    # when: the operator opens the tasks page
    chromium.get(f"{flower.base_url}/tasks")

    # then: the table lists every task of a cycle by name ...
    def table_text(driver: webdriver.Chrome) -> str:
        return str(driver.find_element(By.CSS_SELECTOR, "#tasks-table tbody").text)

    WebDriverWait(chromium, 60, poll_frequency=0.5).until(
        lambda driver: all(name in table_text(driver) for name in CYCLE_TASKS),
        message=f"the tasks page did not list {', '.join(CYCLE_TASKS)}",
    )
    text = table_text(chromium)
    # ... in the state SUCCESS, with the short argument summaries in their own column
    assert "SUCCESS" in text
    assert re.search(r"\(seq=\d+, shard=\d+, targets=\d+\)", text)
    assert re.search(r"\(seq=\d+, epoch=\d+, shards=\d+\)", text)
    columns = {
        th.get_attribute("data-column")
        for th in chromium.find_elements(By.CSS_SELECTOR, "#tasks-table th[data-column]")
    }
    assert {"name", "state", "args", "kwargs", "runtime"} <= columns, columns

    shot = tmp_path / "flower-tasks.png"
    assert chromium.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    assert shot.stat().st_size > 20_000, "the screenshot looks empty"
    if os.environ.get("PACING_TEST_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
