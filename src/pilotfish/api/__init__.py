"""Resource kinds, defaults and validation: the one source of the API."""
