"""Experiment trackers as reporter plugins: TensorBoard, Weights & Biases (offline), MLflow (file store).

Each tracker is a module of its own, registered under its own entry point (``tensorboard``, ``wandb``,
``mlflow``), with its own pipeline table, off by default (``--set tensorboard.enabled=true``). Each logs
the training loss and learning rate every ``[train] log_every`` steps, the final metrics, and the
resolved pipeline (``pipeline.toml`` of the run directory), into the run directory; a resumed run
(``flowkit resume``) appends to the same tracker run. They act through lifecycle hooks only.
"""
