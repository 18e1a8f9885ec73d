"""One slot's working copy as untrusted input: its .git audited, its holder's work
saved, the tree cleaned back to the pool's tip, its integrity checked."""
