"""The import graph follows the layers (docs/architecture.md): the base library ``ragfleet``
imports no service and no tool; a service imports the base library and none of the other
services or the tools; the tools (``ragfleet_tools``) may import anything. Imports inside
functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("embedder", "retriever", "generator", "gateway")
# Generated gRPC stubs: they import only protobuf, grpc and each other.
STUBS = {"common", *SERVICES}
# Integration folder -> its import package.
INTEGRATIONS = {"langchain-ragfleet": "langchain_ragfleet"}


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    """Top-level package names ``path`` imports, at any depth of its code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def _layer_violations(folder: Path, forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(folder)
        for name in sorted(_imported(path) & forbidden)
    ]


def test_the_base_library_imports_no_service_and_no_tool() -> None:
    base = ROOT / "src" / "ragfleet"
    forbidden = {f"ragfleet_{s}" for s in SERVICES} | {"ragfleet_tools"}
    hand_written = [p for p in base.iterdir() if p.is_dir() and p.name not in STUBS]
    violations = [v for folder in hand_written for v in _layer_violations(folder, forbidden)]
    violations += [
        f"{p.relative_to(ROOT)} imports {name}"
        for p in base.glob("*.py")
        for name in sorted(_imported(p) & forbidden)
    ]
    assert violations == []


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_the_base_library(service: str) -> None:
    others = {f"ragfleet_{s}" for s in SERVICES if s != service} | {"ragfleet_tools"}
    assert _layer_violations(ROOT / "services" / service / "src", others) == []


@pytest.mark.parametrize("integration", sorted(INTEGRATIONS))
def test_an_integration_imports_only_the_base_library(integration: str) -> None:
    forbidden = {f"ragfleet_{s}" for s in SERVICES} | {"ragfleet_tools"}
    src = ROOT / "integrations" / integration / "src"
    assert (src / INTEGRATIONS[integration]).is_dir()
    assert _layer_violations(src, forbidden) == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from ragfleet_embedder.model import x\n    return x\n")
    assert "ragfleet_embedder" in _imported(module)


def test_every_package_declares_what_it_imports_from_the_project() -> None:
    """Each pyproject lists the project packages its code imports (the arrows of the layers)."""
    declared = {
        "src": ROOT / "pyproject.toml",
        "tools/src": ROOT / "tools" / "pyproject.toml",
        **{f"services/{s}/src": ROOT / "services" / s / "pyproject.toml" for s in SERVICES},
        **{
            f"integrations/{i}/src": ROOT / "integrations" / i / "pyproject.toml"
            for i in INTEGRATIONS
        },
    }
    distributions = {"ragfleet": "ragfleet", "ragfleet_tools": "ragfleet-tools"} | {
        f"ragfleet_{s}": f"ragfleet-{s}" for s in SERVICES
    }
    missing = []
    for folder, pyproject in declared.items():
        text = pyproject.read_text()
        imported = {n for p in _modules(ROOT / folder) for n in _imported(p)}
        own = {p.name for p in (ROOT / folder).iterdir() if p.is_dir()}
        for package in sorted((imported & set(distributions)) - own):
            if f'"{distributions[package]}' not in text:
                missing.append(f"{pyproject.relative_to(ROOT)} lacks {distributions[package]}")
    assert missing == []
