"""The endpoint picker: the scheduler behind a gateway, over Envoy's ``ext_proc``.

Follows the Gateway API Inference Extension's endpoint picker protocol v1.0.0
(``docs/proposals/004-endpoint-picker-protocol``): for each inference request the
gateway streams its headers and body to :class:`~policy_service.epp.processor.
ExtProc`; the picker (:class:`~policy_service.epp.picker.Picker`) builds the
request, asks the service's current policy on the service's own view (engine
reports, block index) and answers with the decode endpoint in the
``x-gateway-destination-endpoint`` header and the ``envoy.lb`` dynamic metadata
(fallbacks after it), the prefill endpoint in ``x-prefiller-host-port`` and our
``x-dualpath-*`` headers; or with an immediate 400, 429 or 503.
"""
