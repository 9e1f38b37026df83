"""The live control messages: one class per kind, and encode/decode as each other's inverse."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runtime.live import messages as m


def _example(cls: type) -> object:
    values = {int: 3, float: 1.5, str: "x"}
    args = {}
    for f in dataclasses.fields(cls):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        args[f.name] = next((v for t, v in values.items() if kind == t.__name__),
                            [] if kind.startswith("list") else {})
    return cls(**args)


@pytest.mark.parametrize("kind", list(m.Kind), ids=str)
def test_every_kind_round_trips_through_json(kind: m.Kind) -> None:
    cls = next(c for c in m.Message.__args__ if c.kind is kind)  # type: ignore[attr-defined]
    msg = _example(cls)
    wire = json.loads(json.dumps(m.encode(msg)))  # type: ignore[arg-type]
    assert wire["t"] == kind.value
    assert m.decode(wire) == msg


def test_the_wire_format_keeps_its_keys() -> None:
    assert m.encode(m.Cancel(rid=7, attempt=1)) == {"t": "cancel", "rid": 7, "attempt": 1}
    assert m.encode(m.Free(engine=2)) == {"t": "free", "engine": 2}


@pytest.mark.parametrize("obj", [[1], {"rid": 1}, {"t": "nope"}, {"t": "cancel", "rid": 1}])
def test_what_is_not_a_message_is_refused(obj: object) -> None:
    with pytest.raises(m.MessageError):
        m.decode(obj)
