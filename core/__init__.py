"""Platform-free core: models, pipeline, memory, media, answering, settings, privacy scopes."""
