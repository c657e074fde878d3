"""The stages: the only modules that read inputs, call the layers, write artifacts atomically
and log to MLflow (synth, index, embed, train, adapt, evaluate, report, ablation)."""
