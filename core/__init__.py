"""Platform-free core: models, pipeline, memory, media, answering, settings, privacy scopes.

`core.build.build(...)` puts a Core together (imported from there: importing it here would make
every `import core.x` load the whole pipeline)."""
