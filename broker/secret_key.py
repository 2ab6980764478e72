"""Where the key that seals secrets at rest comes from, and the check that it is the right one.

Looked for in this order:

1. ``Settings.secret_key_file`` or ``ZTB_SECRET_KEY_FILE``: a file a secret store delivers
   (systemd ``LoadCredential=``, a Kubernetes secret volume, Docker secrets). Several
   replicas on one PostgreSQL database must all be given the same key this way.
2. ``DATA_DIR/secrets.key`` (mode 0600), made on first start.

The file holds 32 random bytes in base64 (one line). The database records the key's
fingerprint (not the key), so a broker started with another key stops at once with a clear
message instead of failing at the first TOTP check; and a missing key file is never
silently replaced while the database holds secrets sealed with the old one.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from sqlalchemy import Engine, insert, inspect, select
from sqlalchemy.exc import IntegrityError

from .config import Settings
from .db.models import SealingKey
from .db.sealing import KEY_BYTES, SealError, SecretBox, attach

KEY_FILE = "secrets.key"
KEY_FILE_ENV = "ZTB_SECRET_KEY_FILE"


def read_key(path: Path) -> SecretBox:
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except (OSError, binascii.Error, UnicodeDecodeError) as exc:
        raise SealError(f"cannot read the secrets key {path}: {exc}") from exc
    if len(key) != KEY_BYTES:
        raise SealError(f"{path} must hold {KEY_BYTES} bytes in base64, not {len(key)}")
    return SecretBox(key)


def write_new_key(path: Path) -> SecretBox:
    key = os.urandom(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(key).decode() + "\n")
    return SecretBox(key)


def configured_key_file(settings: Settings) -> Path | None:
    if settings.secret_key_file is not None:
        return settings.secret_key_file
    from_env = os.environ.get(KEY_FILE_ENV)
    return Path(from_env) if from_env else None


def recorded_fingerprint(engine: Engine) -> str | None:
    """The fingerprint of the key this database's secrets are sealed with, if any."""
    if not inspect(engine).has_table(SealingKey.__tablename__):
        return None
    with engine.connect() as connection:
        return connection.execute(select(SealingKey.fingerprint)).scalar()


def open_box(settings: Settings, engine: Engine) -> SecretBox:
    """The configured key, else the data directory's, else a new one there: but only for
    a database that has never sealed anything (a lost key is not replaced in silence)."""
    configured = configured_key_file(settings)
    if configured is not None:
        return read_key(configured)
    path = settings.data_dir / KEY_FILE
    if path.exists():
        return read_key(path)
    if recorded_fingerprint(engine) is not None:
        raise SealError(
            f"this database's secrets are sealed with a key that is not here: restore {path} "
            f"from the backup, or point {KEY_FILE_ENV} at it"
        )
    return write_new_key(path)


def attach_key(settings: Settings, engine: Engine) -> SecretBox:
    """Give the engine its key before migrations run (they seal or open existing values)."""
    box = open_box(settings, engine)
    attach(engine, box)
    return box


def check_fingerprint(engine: Engine, box: SecretBox) -> None:
    """Record the key's fingerprint on first use; afterwards refuse any other key. (A
    schema older than sealing has nowhere to record it.)"""
    if not inspect(engine).has_table(SealingKey.__tablename__):
        return
    recorded = recorded_fingerprint(engine)
    if recorded is None:
        try:
            with engine.begin() as connection:
                connection.execute(insert(SealingKey).values(id=1, fingerprint=box.fingerprint))
            return
        except IntegrityError:  # another replica recorded it first
            recorded = recorded_fingerprint(engine)
    if recorded != box.fingerprint:
        raise SealError(
            "the secrets key given does not match the one this database's secrets are sealed "
            f"with (fingerprint {recorded}): restore the right key file"
        )
