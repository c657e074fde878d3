"""Data: NSD / NSD-Imagery readers and constants, the trial index and its schema, splits, the beta
cache, which trials each stage uses, and the stimuli."""
