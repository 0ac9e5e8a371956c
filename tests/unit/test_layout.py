"""The layout the README's "Layout" section describes stays true: no import cycle anywhere in
``pacing`` and ``tasks``, the domain never imports Celery (not even inside a function), and no
module grows past what a reader takes in at one sitting.

The import graph is grimp's (the engine of import-linter), built from the source: every import
statement counts, those inside functions and under ``if TYPE_CHECKING:`` included, since a cycle
a function hides is still a loop a reader has to follow."""

from __future__ import annotations

from pathlib import Path

import grimp
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 500
#: modules allowed past MAX_MODULE_LINES, each with its reason in the README's "Layout" section
LONG_MODULES: dict[str, str] = {}


def import_cycles(graph: grimp.ImportGraph) -> list[str]:
    """Each direct import whose target imports its importer back, with the way back: one line a
    cycle per import on it (a cycle of three modules gives three lines)."""
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.append(" -> ".join((importer, *back)))
    return cycles


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("pacing", "tasks", include_external_packages=True, cache_dir=None)


def test_the_walker_finds_a_cycle_through_any_number_of_modules() -> None:
    # given a graph with one loop of three modules and an import off it
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]:
        graph.add_import(importer=importer, imported=imported)

    # when / then every edge of the loop is reported with its way back, and nothing else
    assert import_cycles(graph) == ["a -> b -> c -> a", "b -> c -> a -> b", "c -> a -> b -> c"]


def test_the_walker_sees_every_module_of_both_packages(graph: grimp.ImportGraph) -> None:
    # given / when / then: the graph holds the modules the stages live in, so an empty list of
    # cycles below is about them and not about a graph that missed them
    assert {
        "tasks.app",
        "tasks.cycle",
        "pacing.cycle.plan",
        "pacing.cycle.shard",
        "pacing.cycle.merge",
        "pacing.cycle.publish",
        "pacing.cycle.audit",
        "pacing.history.writing",
        "pacing.cli.localstack",
    } <= graph.modules


def test_no_import_cycle_in_pacing_or_tasks(graph: grimp.ImportGraph) -> None:
    # given the graph of both packages (the outside packages in it import nothing back)
    # when / then
    assert import_cycles(graph) == []


def test_the_domain_never_imports_celery_even_inside_a_function(
    graph: grimp.ImportGraph,
) -> None:
    # given / when
    importers = {
        module
        for celery_package in ("celery", "kombu", "billiard")
        if celery_package in graph.modules
        for module in graph.find_modules_that_directly_import(celery_package)
        if module.split(".")[0] == "pacing"
    }

    # then
    assert importers == set()


def test_no_module_is_longer_than_one_sitting() -> None:
    # given
    modules = sorted(
        path
        for package in ("pacing", "tasks", "benchmarks")
        for path in (REPOSITORY / package).rglob("*.py")
    )
    readme = (REPOSITORY / "README.md").read_text()

    # when
    too_long = {
        str(path.relative_to(REPOSITORY)): lines
        for path in modules
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }

    # then every long module is a listed exception, and each exception is explained
    assert set(too_long) <= set(LONG_MODULES), too_long
    assert all(module in readme for module in LONG_MODULES)
