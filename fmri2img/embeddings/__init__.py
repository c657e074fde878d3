"""Embeddings of the stimuli: the per-model cache (:mod:`.cache`) and open_clip encoding (:mod:`.clip`)."""
