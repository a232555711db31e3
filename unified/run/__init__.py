"""Running a scenario: the reference model, the job cache, workers, executors and the
results file."""
