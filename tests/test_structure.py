"""The shape of the code: which module may import which, and no reference outside the repository."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "barrierkit"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "kernels").glob("*.py"), *(ROOT / "bench").glob("*.py")])
SUBMODULES = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} | {"kernels"}


def _module_name(path: Path) -> str:
    """The dotted name a file is imported as (kernels/ is installed as barrierkit.kernels)."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["barrierkit", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """(absolute module, imported names) of every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


@pytest.mark.parametrize("path", [p for p in SOURCES if p != PACKAGE / "__init__.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_the_package_root(path):
    """``import barrierkit`` or ``from barrierkit import X`` (X not a submodule) runs back up
    through __init__; modules import what they need from the module that defines it."""
    for module, names in _imports(path):
        if module == "barrierkit":
            assert names and all(name in SUBMODULES for name in names), f"{path.name} imports {names or 'barrierkit'} from the package root"


def test_config_imports_no_other_barrierkit_module():
    """Configuration is a leaf: it must not depend on the fitting, PAC or engine code."""
    found = [module for module, _ in _imports(PACKAGE / "config.py") if module.startswith("barrierkit")]
    assert found == []


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_does_not_import_the_cli(path):
    assert all(module != "barrierkit.cli" for module, _ in _imports(path))


OUTSIDE = re.compile(r"\.\./shared|shared/(seeds|data|METHOD|ARCHITECTURE)|\bseed 0\d\d\b|\b[Ii]ssue \d|(?<!docs/)METHOD\.md|METHOD section")


@pytest.mark.parametrize("path", [*SOURCES, *sorted((ROOT / "tests").glob("*.py")), *sorted((ROOT / "bench").glob("*.sh"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_to_files_outside_the_repository(path):
    """Comments and docstrings cite the project's own docs/METHOD.md, never a file a user does not have."""
    if path == Path(__file__).resolve():
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert not OUTSIDE.search(line), f"{path.name}:{number}: {line.strip()}"


def test_every_method_reference_names_a_section_that_exists():
    method = (ROOT / "docs" / "METHOD.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", method, flags=re.M))
    cited = set()
    for path in [*SOURCES, *sorted((ROOT / "tests").glob("*.py")), ROOT / "README.md", ROOT / "ARCHITECTURE.md"]:
        for ref in re.findall(r"docs/METHOD\.md (§[\d.§\-– and]+)", path.read_text(encoding="utf-8")):
            cited |= set(re.findall(r"§(\d+(?:\.\d+)?)", ref))
    assert cited, "no code cites docs/METHOD.md"
    assert cited <= sections, f"cited sections missing from docs/METHOD.md: {sorted(cited - sections)}"
