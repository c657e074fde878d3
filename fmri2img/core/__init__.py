"""The floor every other module stands on: errors, atomic files, configs, MLflow tracking, logs, executors,
Ctrl-C handling, provenance and the project's vocabulary (every name tuple, defined once)."""
