"""The /v1 routers, one per resource; each handler reads and writes the database, never trains."""
