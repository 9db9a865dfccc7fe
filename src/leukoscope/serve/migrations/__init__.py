"""Alembic migrations of the web app's database (leukoscope.serve.migrate runs them at start-up)."""
