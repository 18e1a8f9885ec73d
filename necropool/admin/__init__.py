"""Administration: creating, growing, shrinking and deleting pools; config sync."""
