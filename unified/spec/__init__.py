"""The scenario format, lowest layer: errors, YAML with line numbers, the unified steps,
Distiller-semantics schedules and the scenario model. Imports no other squeezelab layer."""
