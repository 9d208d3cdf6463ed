"""The HTTP layer: routers, schemas, errors, auth dependencies."""
