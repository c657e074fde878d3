"""The ``fmri2img`` command line: one thin Typer module per command (see :mod:`.main`)."""
