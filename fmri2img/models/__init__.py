"""Decoders (ridge, mlp, two_stage) and adapters behind one registry (:mod:`.registry`)."""
