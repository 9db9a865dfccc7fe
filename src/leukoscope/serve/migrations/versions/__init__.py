"""Alembic revisions, one per schema version; a released revision is never edited, only followed by another."""
