"""The ztb broker: FastAPI service, storage, session lifecycle, audit chain."""
