"""Torch code shared by the reference stage and the adapters (imported lazily)."""
