"""A compact GAN trainer: MLP GAN and DCGAN on small images.

Knows nothing of Ray, Optuna or MLflow: the study layer adapts it to them.
"""
