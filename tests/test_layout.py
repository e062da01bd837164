"""The code's layout holds (docs/architecture.md): no module reaches into another's private
names, no import circle, and inside `apps/conversations` imports point one way: inbox → inbound →
outbound → the app's shared modules (models, services, scheduling). Read from the source with
`ast`, function-level imports included: a circle that only a late import hides is still one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("apps", "klaros", "tests", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(*tops: str) -> dict[str, Path]:
    modules = {}
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            modules[module_name(path)] = path
    return modules


MODULES = source_modules(*FIRST_PARTY)


def resolve(importer: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path):
    """(imported module, names taken from it) for every import in the module, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield resolve(name, path, node), [alias.name for alias in node.names]


def first_party_edges(prefix: str) -> dict[str, set[str]]:
    """module -> the modules under `prefix` it imports (`from pkg import submodule` counts as
    importing the submodule)."""
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        if not name.startswith(prefix):
            continue
        targets = edges.setdefault(name, set())
        for module, names in imports_of(name, path):
            for target in [module, *(f"{module}.{n}" for n in names)]:
                if target in MODULES and target.startswith(prefix) and target != name:
                    targets.add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_it_finds_the_modules_it_checks():
    assert "apps.conversations.inbound.ingest" in MODULES
    assert "apps.conversations.outbound.dispatcher" in MODULES
    assert "apps.conversations.inbox.thread" in MODULES


def test_no_module_imports_a_private_name_of_another():
    offenders = []
    for name, path in MODULES.items():
        for module, names in imports_of(name, path):
            if not module.startswith(FIRST_PARTY):
                continue
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    offenders.append(f"{name} imports {imported} from {module}")
    assert offenders == []


@pytest.mark.parametrize("prefix", ["apps.", "apps.conversations.", "apps.whatsapp."])
def test_there_is_no_circle_of_imports(prefix):
    assert cycles(first_party_edges(prefix)) == []


def test_the_cycle_finder_sees_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


APP = "apps.conversations"
# Each room may import only the rooms below it.
BELOW = {
    f"{APP}.inbox": {f"{APP}.inbound", f"{APP}.outbound"},
    f"{APP}.inbound": {f"{APP}.outbound"},
    f"{APP}.outbound": set(),
}
ROOMS = set(BELOW)
# The app's entry points, which wire the rooms to Django and django-q2.
ENTRY_POINTS = {f"{APP}.admin", f"{APP}.apps", f"{APP}.tasks"}


def room_of(module: str) -> str | None:
    return next((room for room in ROOMS if module == room or module.startswith(room + ".")), None)


def direction_violations(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in edges.items():
        if module in ENTRY_POINTS or module.startswith(f"{APP}.management."):
            continue
        source = room_of(module)
        for target in targets:
            room = room_of(target)
            if room is None or room == source:
                continue
            if source is None:
                wrong.append(f"shared module {module} imports {target}")
            elif room not in BELOW[source]:
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def test_imports_inside_the_conversations_app_point_one_way():
    assert direction_violations(first_party_edges(APP + ".")) == []


def test_the_direction_check_sees_an_upward_import():
    edges = {
        f"{APP}.outbound.outbox": {f"{APP}.inbound.ingest", f"{APP}.models"},
        f"{APP}.services": {f"{APP}.inbox.thread"},
        f"{APP}.inbound.ingest": {f"{APP}.outbound.statuses"},
        f"{APP}.tasks": {f"{APP}.inbound.journal"},
    }
    assert direction_violations(edges) == [
        f"{APP}.outbound.outbox imports {APP}.inbound.ingest",
        f"shared module {APP}.services imports {APP}.inbox.thread",
    ]
