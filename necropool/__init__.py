"""necropool: pools of ready-made git working copies ("slots") for parallel jobs."""

__version__ = "0.1.0"
