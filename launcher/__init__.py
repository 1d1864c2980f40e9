"""Host description, supervisor and the ``xenolab`` command."""
