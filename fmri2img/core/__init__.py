"""The floor every stage and layer builds on; it knows nothing of decoders or cells."""
