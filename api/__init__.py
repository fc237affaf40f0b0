"""HTTP API (FastAPI). Imports `jobs` only: never torch, `pipeline` or `workers`."""
