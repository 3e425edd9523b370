"""The HTTP service of eventhub-log: FastAPI routes over the library's EventHub."""
