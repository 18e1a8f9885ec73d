"""Git itself: the hardened git CLI and the ref and object files read directly."""
