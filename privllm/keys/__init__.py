"""Key material on disk: secret files 0600 in directories 0700, written atomically, checked on load."""
