"""Package layout: `rollout` and `rewards` come from this repository, and the three packages import one way only.

`wlarl/` imports none of rollout, rewards, recipes; `rewards/` imports neither rollout nor recipes (task data such
as the subtask rule table reaches rewards through the reward context); `rollout/` imports neither rewards nor
recipes (the recipe hands it a reward scorer).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "wlarl": {"rollout", "rewards", "recipes"},
    "rewards": {"rollout", "recipes"},
    "rollout": {"rewards", "recipes"},
}


def test_rollout_and_rewards_import_from_this_repository():
    import rewards
    import rollout

    for module in (rollout, rewards):
        assert Path(module.__file__).resolve().is_relative_to(ROOT), (
            f"{module.__name__} imported from {module.__file__}"
        )


def _imported_roots(tree: ast.AST) -> set[str]:
    """Top-level packages a module imports: import statements anywhere (also inside functions or try blocks) and
    `importlib.import_module` / `__import__` calls with a constant name."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module",
            "__import__",
        ):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                roots.add(arg.value.split(".")[0])
    return roots


def _offenders(package: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_roots(ast.parse(path.read_text(), filename=str(path))) & forbidden
        if bad:
            out.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package):
    offenders = _offenders(package, FORBIDDEN[package])
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(offenders)


def test_the_import_check_sees_lazy_imports():
    tree = ast.parse(
        "def f():\n    try:\n        from rollout import experts\n    except ImportError:\n        pass\n"
        "import importlib\nimportlib.import_module('recipes.grpo_world')\n"
    )
    assert _imported_roots(tree) >= {"rollout", "recipes", "importlib"}
