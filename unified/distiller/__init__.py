"""Distiller schedule files (YAML) translated into unified steps."""
