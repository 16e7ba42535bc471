"""RAGFlow: what it needs to use the stack (config.py)."""
