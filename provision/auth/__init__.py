"""Authentication of the Xinference server: first-run setup, credentials, and the clients that carry them."""

from .clients import admin_client, api_key_for, has_key, key_client, server_record_fields
from .credentials import credentials_path, load_credentials, save_credentials
from .setup import ensure_credentials
from .warnings import security_warnings, state_folder_warnings

__all__ = ["admin_client", "api_key_for", "credentials_path", "ensure_credentials", "has_key", "key_client",
           "load_credentials", "save_credentials", "security_warnings", "server_record_fields",
           "state_folder_warnings"]
