"""The study: adapts the `gan` trainer to Ray Tune, Optuna and MLflow (see issue 4 onwards)."""
