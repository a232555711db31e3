"""A model module that calls sys.exit when imported (a script, not a module)."""

import sys

sys.exit("usage: corpus_models_exit.py --epochs N")
