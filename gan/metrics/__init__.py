"""Quality metrics in the feature space of the project's own classifier (see features.py)."""
