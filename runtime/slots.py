"""A faster ``__init__`` for the frozen slots dataclasses built on the hot path."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar

_T = TypeVar("_T")


def slot_init(cls: type[_T]) -> type[_T]:
    """Give the frozen slots dataclass ``cls`` an ``__init__`` that stores each field
    through its slot's descriptor, then calls ``__post_init__`` if it has one.

    The generated ``__init__`` of a frozen dataclass calls ``object.__setattr__``
    per field, which costs about twice as much, and the simulator builds views,
    requests and decisions on every scheduling step. Same signature and defaults
    (no default factories); the instances are as frozen as before.
    """
    init_fields = [f for f in fields(cls) if f.init]  # type: ignore[arg-type]
    for f in fields(cls):  # type: ignore[arg-type]
        assert f.init or (f.default is MISSING and f.default_factory is MISSING), (
            f"{cls.__name__}.{f.name}: a field left out of __init__ is __post_init__'s to set")
    names = [f.name for f in init_fields]
    namespace: dict[str, Any] = {f"_set_{n}": getattr(cls, n).__set__ for n in names}
    params = []
    for f in init_fields:
        assert f.default_factory is MISSING, "defaults only"
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    body = "".join(f"    _set_{n}(self, {n})\n" for n in names)
    if hasattr(cls, "__post_init__"):
        body += "    self.__post_init__()\n"
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", namespace)
    namespace["__init__"].__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = namespace["__init__"]  # type: ignore[method-assign]
    return cls
