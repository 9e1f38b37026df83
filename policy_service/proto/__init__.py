"""The service's API (``scheduler.proto``) and its generated Python modules.

``python -m policy_service.proto`` regenerates ``scheduler_pb2*.py`` from the
``.proto``; ``tests/policy_service/test_proto.py`` fails when they drift apart.
"""
