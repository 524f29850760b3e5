"""After training: predict, serve, report and the list of runs."""
