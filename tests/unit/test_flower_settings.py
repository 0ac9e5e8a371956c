"""Flower's options from the settings (tasks/flower_settings.py, executed through
tasks/flowerconfig.py): where basic auth comes from, the refusal to run without credentials
outside development mode, and how `celery -A tasks flower` finds the config file."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pacing.errors import ConfigurationError
from pacing.settings import Settings, load_settings
from tasks.flower_settings import (
    CONFIG_FILE,
    FLOWER_DEFAULT_TASKS_COLUMNS,
    TASKS_COLUMNS,
    flower_options,
    use_service_flower_config,
)

PRODUCTION = {
    "environment": "production",
    "engagement_url": "https://engagement.example.com/api",
    "engagement_token": "production-token",
}


@dataclass
class Given:
    """Flower's options as read from FLOWER_* variables and the command line."""

    basic_auth: Sequence[str] | None = None
    auth: str = ""
    tasks_columns: str = FLOWER_DEFAULT_TASKS_COLUMNS


def settings(**overrides: Any) -> Settings:
    return load_settings(overrides)


def test_basic_auth_comes_from_the_setting() -> None:
    # when
    options = flower_options(settings(flower_basic_auth="operator:pw-1"), Given())

    # then
    assert options["basic_auth"] == ["operator:pw-1"]


def test_several_users_are_separated_by_commas_like_in_flower() -> None:
    options = flower_options(settings(flower_basic_auth="ann:pw-1, bob:pw-2"), Given())

    assert options["basic_auth"] == ["ann:pw-1", "bob:pw-2"]


@pytest.mark.parametrize(
    "given",
    [Given(basic_auth=["admin:from-command-line"]), Given(auth=r".*@example\.com")],
    ids=["--basic-auth", "--auth (OAuth)"],
)
def test_flower_credentials_given_to_flower_itself_win(given: Given) -> None:
    # given: `pacing up` passes --basic-auth; an OAuth deployment passes --auth
    # when
    options = flower_options(settings(flower_basic_auth="operator:pw-1", **PRODUCTION), given)

    # then: the file leaves Flower's own value alone
    assert "basic_auth" not in options


def test_outside_development_flower_refuses_to_run_without_credentials() -> None:
    # when
    with pytest.raises(ConfigurationError) as refused:
        flower_options(settings(**PRODUCTION), Given())

    # then: one sentence that says how to fix it
    message = str(refused.value)
    assert message.startswith("Flower needs credentials outside development mode; set ")
    assert "PACING_FLOWER_BASIC_AUTH=user:password" in message
    assert message.endswith(".")
    assert "\n" not in message
    assert re.search(r"\.\s+[A-Z]", message) is None


def test_in_development_flower_may_run_open_but_says_so(caplog: pytest.LogCaptureFixture) -> None:
    # when
    with caplog.at_level(logging.WARNING, logger="tasks.flower_settings"):
        options = flower_options(settings(environment="development"), Given())

    # then
    assert "basic_auth" not in options
    assert "without authentication" in caplog.text


def test_tasks_page_shows_the_argument_summaries_unless_the_operator_chose_columns() -> None:
    dev = settings(environment="development", flower_basic_auth="a:b")

    default = flower_options(dev, Given())
    chosen = flower_options(dev, Given(tasks_columns="name,state"))

    columns = default["tasks_columns"].split(",")
    assert columns[:5] == ["name", "state", "args", "kwargs", "runtime"]
    assert default["tasks_columns"] == TASKS_COLUMNS
    assert "tasks_columns" not in chosen


def test_every_option_set_is_a_flower_option() -> None:
    # given: Flower's own option definitions
    import flower.options  # noqa: F401 - defines Flower's options on tornado's parser
    from tornado.options import options as tornado_options

    # when
    options = flower_options(settings(flower_basic_auth="a:b"), Given())

    # then: Flower would take each one (a misspelt name would be silently ignored)
    assert set(options) <= set(tornado_options.as_dict())


# --- how `celery -A tasks flower` finds the config file ------------------------------------------


@contextlib.contextmanager
def flower_conf_option() -> Iterator[Any]:
    """Tornado's global options with Flower's defined, ``--conf`` at Flower's default; restored
    afterwards (tornado's parser is process-wide)."""
    import flower.options
    from tornado.options import options

    before = options.conf
    options.conf = flower.options.DEFAULT_CONFIG_FILE
    try:
        yield options
    finally:
        options.conf = before


def test_importing_tasks_under_flower_makes_the_service_config_flowers_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given: Flower's options loaded (the celery command line loads them before the app) and a
    # working directory without a flowerconfig.py
    monkeypatch.chdir(tmp_path)
    with flower_conf_option() as options:
        # when
        use_service_flower_config()

        # then
        assert options.conf == str(CONFIG_FILE)
    assert CONFIG_FILE.is_file()


def test_an_operators_own_flowerconfig_in_the_working_directory_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flowerconfig.py").write_text("port = 5566\n")
    monkeypatch.chdir(tmp_path)
    with flower_conf_option() as options:
        use_service_flower_config()

        assert options.conf == "flowerconfig.py"


def test_flower_executing_the_config_file_gets_the_settings_options(tmp_path: Path) -> None:
    # given: a process like `celery -A tasks flower` before it serves: Flower's options, the
    # app, then the config file executed the way Flower does it, in a directory of no importance
    script = (
        "import flower.command\n"
        "from tornado.options import options\n"
        "import tasks\n"
        "options.parse_config_file(options.conf, final=False)\n"
        "print(options.conf)\n"
        "print(','.join(options.basic_auth))\n"
        "print(options.tasks_columns)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    env["PACING_FLOWER_BASIC_AUTH"] = "ann:pw-1,bob:pw-2"

    # when
    finished = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # then
    assert finished.returncode == 0, finished.stderr
    conf, basic_auth, columns = finished.stdout.splitlines()[-3:]
    assert conf == str(CONFIG_FILE)
    assert basic_auth == "ann:pw-1,bob:pw-2"
    assert columns == TASKS_COLUMNS
