"""One module per verb that reads the state or the manifest and returns a result for render.py."""
