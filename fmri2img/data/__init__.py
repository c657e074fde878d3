"""Data: NSD / NSD-Imagery readers, the synthetic world, the trial index, splits and the beta cache."""
