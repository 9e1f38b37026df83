"""A node's HTTP fronts: the OpenAI-compatible API of the live cluster.

Every engine of a node with fronts listens on its own port (its endpoint,
``host:port``). A decode engine's front serves ``/v1/completions`` and
``/v1/chat/completions`` (streamed as server-sent events or whole, with usage),
runs each request through the live runtime's paths (:class:`runtime.live.messages.
Submit` to the router; the engine's own decode batch produces its tokens) and streams
them as they are produced. Every engine's front serves ``/v1/models``, ``/health``,
``/metrics`` (Prometheus text) and ``/dualpath/received`` (the picker headers of the
latest requests, as received). Modules: :mod:`.server` (:class:`Front`), :mod:`.call`
(one request in flight), :mod:`.bodies` (the API's response objects).
"""

from runtime.live.front.server import Front

__all__ = ["Front"]
