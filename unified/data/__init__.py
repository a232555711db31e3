"""Data that ships in packages (no download at run time) and the splits every backend
shares."""
