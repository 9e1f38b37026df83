"""The golden results: every execution's outputs on small configurations, compared exactly.

Regenerate ``tests/golden/golden.json`` with ``python -m tests.golden.cases --write``
only when a change is meant to alter results (and say so in its commit).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.golden.cases import CASES, GOLDEN


def _differences(want: Any, got: Any, where: str = "") -> list[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in want.keys() - got.keys()]
        out += [f"{where}.{k}: unexpected" for k in got.keys() - want.keys()]
        for k in want.keys() & got.keys():
            out += _differences(want[k], got[k], f"{where}.{k}")
        return out
    return [] if want == got else [f"{where}: golden {want!r}, now {got!r}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    want = json.loads(GOLDEN.read_text())[name]
    got = json.loads(json.dumps(CASES[name]()))
    differences = _differences(want, got, name)
    assert not differences, "\n".join(sorted(differences)[:40])
