"""The application shell: CLI, configuration, wiring, the HTTP server."""
