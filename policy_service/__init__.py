"""policy_service package."""
