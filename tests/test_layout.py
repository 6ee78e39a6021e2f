"""Package layout: `rollout` and `rewards` come from this repository; `wlarl/` never imports them or `recipes`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("rollout", "rewards", "recipes")


def test_rollout_and_rewards_import_from_this_repository():
    import rewards
    import rollout

    for module in (rollout, rewards):
        assert Path(module.__file__).resolve().is_relative_to(ROOT), (
            f"{module.__name__} imported from {module.__file__}"
        )


def _imported_roots(tree: ast.AST) -> set[str]:
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


def test_wlarl_never_imports_rollout_rewards_or_recipes():
    offenders = []
    for path in sorted((ROOT / "wlarl").rglob("*.py")):
        bad = _imported_roots(ast.parse(path.read_text(), filename=str(path))) & set(FORBIDDEN)
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "wlarl/ must not import rollout, rewards or recipes:\n" + "\n".join(offenders)
