"""RAGFlow: what it needs to use the stack (config.py), its HTTP API (api.py), registering a stack in a
running RAGFlow (apply.py, with result.py for what it reports and remedy.py for what to do about a failure)."""
