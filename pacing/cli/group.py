"""The ``pacing`` group: the top-level command, its help and exit-codes epilog, and where every
command is attached.

The commands live in one module per group (:mod:`~pacing.cli.up`, :mod:`~pacing.cli.observe`,
:mod:`~pacing.cli.db`, :mod:`~pacing.cli.targets`, :mod:`~pacing.cli.history`), which import
only :mod:`pacing.cli._common`; they are attached at the end of this module. Commands of other
packages (``pacing evaluate``) are imported only when used, so ``pacing --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from pacing.cli.db import db
from pacing.cli.history import channels, cycles, history, leaders
from pacing.cli.observe import exporter, status
from pacing.cli.targets import targets
from pacing.cli.up import simulate, up

#: Commands that live in other modules, imported only when used (`pacing --help` stays fast):
#: ``name → (module:attribute, short help)``.
LAZY_COMMANDS = {
    "evaluate": (
        "pacing.evaluation.command:evaluate",
        "Score the pacing algorithms in virtual time (no Celery, no HTTP).",
    ),
}

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  the operation failed (database or Redis down, port taken, ...)
  2  bad usage or invalid input (nothing was changed)
  3  invalid settings (the message names the PACING_* variable)
  4  `pacing status --check`: the cluster is not publishing
"""


class LazyGroup(click.Group):
    """A group that also offers commands from modules imported on first use."""

    def __init__(
        self, *args: Any, lazy_commands: dict[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, without importing the lazy commands' modules."""
        rows: list[tuple[str, str]] = []
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(name) for name in names), default=0)
        for name in names:
            if name in self.lazy_commands and name not in self.commands:
                rows.append((name, self.lazy_commands[name][1]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in self.lazy_commands:
            return command
        module_name, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
        loaded = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(loaded, click.Command):
            raise TypeError(f"{module_name}:{attribute} is not a click command")
        return loaded


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
def main() -> None:
    """Agent Pacing Service: pace proactive chat invitations for agent groups.

    Settings come from PACING_* environment variables (see the README). Start a local stack
    with `pacing up`, then look at it with `pacing status`, `pacing cycles` and `pacing
    exporter`; manage targets with `pacing targets`. `pacing COMMAND --help` explains each
    command with an example.

    \b
    Example:
      pacing db upgrade && pacing targets import groups.csv && pacing up
    """


for _command in (up, simulate, status, exporter, db, targets, cycles, history, channels, leaders):
    main.add_command(_command)
