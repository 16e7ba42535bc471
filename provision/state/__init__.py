"""The state: the records of what provision started (records.py) and the folder that holds them (folder.py)."""

from .folder import DEFAULT_STATE_DIR, StateDir, default_state_dir, read_private, write_atomic
from .records import STATE_VERSION, AttemptRecord, ModelRecord, ServerRecord, State, WorkerRecord

__all__ = ["DEFAULT_STATE_DIR", "STATE_VERSION", "AttemptRecord", "ModelRecord", "ServerRecord", "State", "StateDir",
           "WorkerRecord", "default_state_dir", "read_private", "write_atomic"]
