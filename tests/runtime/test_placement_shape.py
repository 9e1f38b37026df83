"""Code shape: the rules of placement live in ``runtime/placement`` and nowhere else.

Outside it, no module changes an engine's reserved load (``seq``, ``tok``,
``free_hbm``), and none decides when a deferred request is asked again (sets the
queue's ``due``, touches its ``_wait``, or compares against ``WaitFor``; hot loops
may read ``due``). Policies
still answer ``Defer(..., WaitFor.X)``: building one is not deciding.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("runtime", "env", "agents", "policy_service", "experiments")
PLACEMENT = ROOT / "runtime" / "placement"
LOAD_FIELDS = {"seq", "tok", "free_hbm"}
PRIVATE_QUEUE_STATE = {"_due", "_wait"}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if PLACEMENT not in p.parents and "proto" not in p.parts)


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, ast.AugAssign | ast.AnnAssign):
        return [node.target]
    return []


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        for target in _targets(node):
            if isinstance(target, ast.Attribute) and target.attr in LOAD_FIELDS:
                found.append(f"line {node.lineno}: changes an engine's .{target.attr}")
            if isinstance(target, ast.Attribute) and target.attr == "due":
                found.append(f"line {node.lineno}: sets the queue's .due")
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_QUEUE_STATE:
            found.append(f"line {node.lineno}: touches the queue's .{node.attr}")
        if isinstance(node, ast.Compare) and any(
                isinstance(n, ast.Name) and n.id == "WaitFor"
                for part in (node.left, *node.comparators) for n in ast.walk(part)):
            found.append(f"line {node.lineno}: compares against WaitFor")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_placement_rule_outside_the_core(path: Path) -> None:
    assert not _violations(path), f"{path.relative_to(ROOT)}: {_violations(path)}"


def test_the_check_finds_what_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("pe.seq += 1\nde.free_hbm = 0\nq._wait = None\nq.due = True\n"
                   "if w is WaitFor.ANY: pass\nok = q.due\n")
    assert len(_violations(bad)) == 5
