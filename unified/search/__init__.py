"""Search across toolkits: an Optuna study over recipe × backend × the searchable values of a
scenario, each trial an ordinary job of the runner. Above the report, below the CLI."""
