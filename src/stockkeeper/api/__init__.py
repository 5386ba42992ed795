"""HTTP: FastAPI apps, schemas, auth and problem+json errors."""
