"""The synthetic NSD world: generative model (:mod:`.model`), file formats (:mod:`.formats`) and
the world writer (:mod:`.world`)."""
