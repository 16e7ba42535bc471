"""The processes provision runs: xinference-local, or a supervisor and workers, on this machine."""
