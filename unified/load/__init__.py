"""Loading a scenario file: YAML with line numbers, recipes given as Distiller schedules,
paths relative to the file, and every check that needs no toolkit run."""
