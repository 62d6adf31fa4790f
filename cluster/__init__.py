"""The control plane: configs, the ``labelcurve`` CLI, Ray and MLflow."""
