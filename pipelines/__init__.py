"""Kubeflow Pipelines v2: the training and ablation DAGs, plus compile, submit and local-run helpers."""
