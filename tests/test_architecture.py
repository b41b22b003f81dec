"""The layering rules of docs/architecture.md, read from the source with ast.

Every import counts, also one inside a function (the lazy imports that keep start-up fast are
still dependencies). A package is a directory under src/mailctl (transports, outbox...); a
top-level module (errors.py, message.py...) is its own unit."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mailctl"

# Packages that hold domain logic: they must not know about the command line.
DOMAIN = ("diagnostics", "dns", "knowledge", "net", "oauth", "outbox", "profiles", "secrets", "transports",
          "errors", "message", "paths", "context", "addresses")
CLI_LIBRARIES = ("typer", "rich", "click")
# The command modules render and parse; the network and protocol libraries belong below them.
NETWORK_LIBRARIES = ("smtplib", "msal", "requests", "exchangelib", "dns", "urllib3", "socks")
# The layers, top to bottom (docs/architecture.md): a unit imports only units of lower layers.
LAYERS = (
    ("__main__",),
    ("cli",),
    ("commands", "_typer_fast"),
    ("context",),
    ("diagnostics", "outbox"),
    ("transports",),
    ("oauth", "dns"),  # dns checks TLS (MX STARTTLS, MTA-STS policy fetch) with net's TLS builder
    ("profiles", "net", "knowledge", "message"),
    ("secrets", "paths", "output", "addresses"),
    ("errors",),
)
# Leaves: they import nothing of mailctl's but these.
LEAVES = {"knowledge": {"errors"}, "net": {"errors"}, "errors": set(), "dns": {"errors", "output", "net"},
          "addresses": {"errors"}}


def _unit(module: str) -> str | None:
    """mailctl.transports.smtp -> transports; mailctl.errors -> errors; other -> None."""
    parts = module.split(".")
    if parts[0] != "mailctl":
        return None
    if len(parts) == 1:
        return "mailctl"
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path):
    """(imported module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
            # `from mailctl import cli` / `from mailctl.oauth import google`: the submodule
            submodules = [n for n in names if _is_module(f"{module}.{n}")]
            for name in submodules:
                yield f"{module}.{name}", [], node.lineno
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                yield module, rest, node.lineno


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != "mailctl":
        return False
    path = SRC.parent.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _files():
    return sorted(p for p in SRC.rglob("*.py"))


def _graph() -> dict[str, dict[str, list[str]]]:
    """unit -> {imported unit: ["file:line", ...]}"""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in _files():
        src_unit = _unit(_module_name(path))
        graph.setdefault(src_unit, {})
        for module, _names, line in _imports(path):
            dst = _unit(module)
            if dst is None or dst == src_unit or dst == "mailctl":
                continue
            graph[src_unit].setdefault(dst, []).append(f"{path.relative_to(SRC.parent)}:{line}")
    return graph


def _cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_packages():
    graph = _graph()
    cycles = _cycles(graph)
    detail = []
    for component in cycles:
        for a in component:
            for b in component:
                if b in graph.get(a, {}):
                    detail.append(f"{a} -> {b}: {', '.join(graph[a][b][:3])}")
    assert not cycles, "package-level import cycles:\n" + "\n".join(detail)


def _package(module: str) -> str:
    """The package a module belongs to: mailctl.transports.smtp -> mailctl.transports;
    the top-level modules (mailctl.cli, mailctl._typer_fast) -> mailctl."""
    parts = module.split(".")
    if len(parts) >= 2 and (SRC / parts[1]).is_dir():
        return ".".join(parts[:2])
    return "mailctl"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_imported_across_packages():
    bad = []
    for path in _files():
        here = _package(_module_name(path))
        for module, names, line in _imports(path):
            if module.split(".")[0] != "mailctl" or _package(module) == here:
                continue
            private_module = any(_private(part) for part in module.split(".")[1:])
            for name in names:
                if _private(name) or private_module:
                    bad.append(f"{path.relative_to(SRC.parent)}:{line}: from {module} import {name}")
    assert not bad, "private names imported from another package:\n" + "\n".join(bad)


def test_domain_packages_do_not_import_cli_libraries():
    bad = []
    for path in _files():
        if _unit(_module_name(path)) not in DOMAIN:
            continue
        for module, _names, line in _imports(path):
            if module.split(".")[0] in CLI_LIBRARIES:
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: import {module}")
    assert not bad, "a domain package imports a CLI library:\n" + "\n".join(bad)


def test_commands_do_not_import_network_libraries():
    bad = []
    for path in sorted((SRC / "commands").rglob("*.py")):
        for module, _names, line in _imports(path):
            if module.split(".")[0] in NETWORK_LIBRARIES:
                bad.append(f"{path.relative_to(SRC.parent)}:{line}: import {module}")
    assert not bad, "a command module imports a network library:\n" + "\n".join(bad)


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_leaves_import_only_what_they_may(leaf):
    graph = _graph()
    allowed = LEAVES[leaf]
    extra = {dst: where for dst, where in graph.get(leaf, {}).items() if dst not in allowed}
    assert not extra, f"{leaf} may import only {sorted(allowed)} of mailctl, not: " + "; ".join(
        f"{dst} ({', '.join(where[:2])})" for dst, where in extra.items())


def test_every_import_goes_down_the_layers():
    graph = _graph()
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    missing = sorted(set(graph) - set(layer) - {"mailctl"})
    assert not missing, f"units without a layer (add them to LAYERS and docs/architecture.md): {missing}"
    bad = []
    for src, targets in graph.items():
        for dst, where in targets.items():
            if src in layer and dst in layer and layer[dst] <= layer[src]:
                bad.append(f"{src} (layer {layer[src]}) -> {dst} (layer {layer[dst]}): {', '.join(where[:3])}")
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_profiles_import_no_transport():
    graph = _graph()
    assert "transports" not in graph.get("profiles", {}), graph["profiles"].get("transports")


def test_the_privacy_rule_knows_packages_and_dunders():
    assert _package("mailctl.transports.smtp") == "mailctl.transports"
    assert _package("mailctl._typer_fast") == _package("mailctl.cli") == "mailctl"
    assert _private("_system_bundle") and not _private("__version__") and not _private("public")


def test_the_rules_see_a_cycle_when_there_is_one():
    """The cycle finder itself: a planted cycle is found, a chain is not."""
    assert _cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b": []}, "b": {"c": []}, "c": {}}) == []


def test_no_function_in_the_outbox_is_over_80_lines():
    """The flush engine and the stores stay readable: one step a method (issue #11)."""
    long = []
    for path in sorted((SRC / "outbox").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not long, "split these:\n" + "\n".join(long)
