"""The `cohort` command line: thin commands over consent, models, client and server."""
