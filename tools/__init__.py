"""Build-time tools, not shipped in the package: the man page generator (``python -m
tools.manpage man`` from the repository root)."""
