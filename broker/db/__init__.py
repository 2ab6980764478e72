"""Storage: SQLAlchemy 2 models and the engine; schema changes go through Alembic only."""
