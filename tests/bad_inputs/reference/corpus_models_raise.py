"""A model module that fails while it is imported."""

raise RuntimeError("this model module needs a CUDA device\nand prints a second line")
