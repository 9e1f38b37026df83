"""Tracking: MLflow runs, tags and the model registry of trained scheduler policies
(:mod:`.mlflow_runs`), and the comparison and learning-curve figures logged with them
(:mod:`.plots`)."""
