"""The HTTP headers between a gateway, the endpoint picker and the decode fronts.

The first two are the Gateway API Inference Extension's endpoint picker protocol
(``docs/proposals/004-endpoint-picker-protocol``, v1.0.0) and llm-d's prefill header;
the ``x-dualpath-`` ones are ours.
"""

#: Decode endpoint(s) chosen, ``host:port[,host:port...]`` (the first is the choice, the
#: rest fallbacks); also the key of the ``envoy.lb`` dynamic metadata.
DESTINATION = "x-gateway-destination-endpoint"
#: Metadata namespace of the destination, and the key the proxy reports the served one by.
LB_NAMESPACE = "envoy.lb"
SERVED = "x-gateway-destination-endpoint-served"
#: The prefill engine's endpoint (disaggregated serving, as llm-d names it).
PREFILLER = "x-prefiller-host-port"
#: The picker's request id, the share of hit blocks read by the decode side, and the hit
#: tokens the picker counted (the prompt's leading tokens whose KV storage holds).
REQUEST_ID = "x-dualpath-request-id"
DECODE_SHARE = "x-dualpath-decode-share"
HIT_TOKENS = "x-dualpath-hit-tokens"
#: Client-set: the session (an agent's turns share one) and the latency class.
SESSION = "x-session-id"
LATENCY_CLASS = "x-dualpath-class"

#: What the picker sets on a routed request (a client's own values are replaced).
PICKED = (DESTINATION, PREFILLER, REQUEST_ID, DECODE_SHARE, HIT_TOKENS)
