"""One served request in flight at a decode engine's front."""

from __future__ import annotations

import asyncio
import math
import time

from runtime.execution.decode import DecodeEngine
from runtime.live.messages import Submit
from runtime.serving.openai import Completion


class Rejected(Exception):
    """The router refused the request: an HTTP status and why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ServedCall:
    """A request between its :class:`Submit` and its last token.

    The decode engine says when the request joins its batch (its first token, from
    prefill, is then out; later ones follow its iterations) and when it finishes; the
    router may refuse it instead. Token ``k`` of a member that joined at iteration ``j``
    is out once the batch has run ``j + k - 1`` iterations (:meth:`produced`).
    """

    def __init__(self, submit: Submit, completion: Completion,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.submit = submit
        self.completion = completion
        self.rid = submit.rid
        self.gen = submit.gen
        self.started = time.monotonic()
        self.created = int(time.time())
        self.joined: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.refused: Rejected | None = None
        self._core: DecodeEngine | None = None
        self._at_join = 0.0
        self.tokens: list[int] = []  # the model engine's tokens, as they come
        self._real = False
        self._next: asyncio.Future[None] = loop.create_future()

    # -- told by the engine and the router ------------------------------------------
    def join(self, core: DecodeEngine | None) -> None:
        """It joined the decode batch (``core``: the emulated batch that times its tokens;
        None: the model engine's, which hands each token over)."""
        if core is not None:
            self._core, self._at_join = core, core.iters
        self._real = core is None
        _resolve(self.joined)

    def token(self, token: int) -> None:
        self.tokens.append(token)
        _resolve(self._next)

    def changed(self) -> asyncio.Future[None]:
        """Resolves when the next real token comes (or the request ends)."""
        if self._next.done():
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    def finish(self) -> None:
        _resolve(self.joined)
        _resolve(self.done)
        _resolve(self._next)

    def reject(self, status: int, message: str) -> None:
        self.refused = Rejected(status, message)
        self.finish()

    # -- read by the front -----------------------------------------------------------
    async def first_token(self) -> None:
        """Wait for the first token; raises :class:`Rejected` if the router refused."""
        await self.joined
        if self.refused is not None:
            raise self.refused

    def produced(self, now: float) -> int:
        """Tokens out by model time ``now`` (all of them once finished)."""
        if self._real:
            return len(self.tokens)
        if self.done.done():
            return self.gen
        if self._core is None:
            return 1 if self.joined.done() else 0
        ran = math.floor(self._core.iters_at(now) - self._at_join + 1e-9)
        return max(1, min(self.gen - 1, 1 + ran))

    def step_s(self) -> float:
        """Model seconds per iteration of its decode batch now (0: unknown)."""
        return self._core.iter_s if self._core is not None else 0.0


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
