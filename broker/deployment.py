"""One identity per deployment: every replica serves the same CA and signs the audit chain
with the same key, or it does not start.

The database records the CA certificate (and its fingerprint, which enrollment tokens pin)
and the audit-signing public key the first time a broker prepares it (``bootstrap``, or
``serve`` on an empty database). From then on a data directory whose keys differ, or that
has none, is refused with the fix; keys are minted only for a database with no identity
and no data, never over an existing one. Keys move between data directories as one JSON
document (``export_keys`` / ``import_keys``: ``ztb broker export-keys | import-keys``),
which a secret store can hold and pipe in; it carries the secrets-at-rest key too
(``broker.secret_key`` checks that one against the database itself).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import pki, secret_key
from .audit import Signer
from .config import Settings
from .db.models import DeploymentIdentity, User

KEYS_FORMAT = "ztb-broker-keys/1"
IDENTITY_ROW = 1


class IdentityError(RuntimeError):
    """This data directory and this database belong to different deployments."""


@dataclass(frozen=True)
class Identity:
    ca_fingerprint: str
    audit_public_key: str


def _fix(data_dir: Path) -> str:
    return (
        "copy the deployment's keys from a working replica: there 'ztb broker export-keys "
        f"--output keys.json', here 'ztb broker import-keys --input keys.json --data-dir "
        f"{data_dir}'"
    )


LocalKeys = tuple[pki.CertificateAuthority | None, Signer | None]


def _local(settings: Settings) -> LocalKeys:
    data_dir = settings.data_dir
    has_ca = (data_dir / pki.CA_CERT_FILE).exists() or (data_dir / pki.CA_KEY_FILE).exists()
    ca = pki.load_ca(data_dir) if has_ca else None
    path = settings.signing_key_path
    return ca, Signer.load_or_create(path) if path.exists() else None


def _describe(ca: pki.CertificateAuthority | None, signer: Signer | None) -> str:
    ca_text = f"CA {ca.fingerprint[:16]}…" if ca else "no CA"
    key_text = f"audit key {signer.public_key[:12]}…" if signer else "no audit key"
    return f"{ca_text}, {key_text}"


def _recorded(db: Session) -> DeploymentIdentity | None:
    return db.get(DeploymentIdentity, IDENTITY_ROW)


def _record(engine: Engine, identity: DeploymentIdentity) -> DeploymentIdentity:
    """Insert the identity row; if another replica recorded one first, return that."""
    try:
        with Session(engine, expire_on_commit=False) as db, db.begin():
            db.add(identity)
    except IntegrityError:
        with Session(engine) as db:
            existing = _recorded(db)
        assert existing is not None
        return existing
    return identity


def _recorded_if_any(engine: Engine) -> tuple[DeploymentIdentity | None, bool]:
    """(the recorded identity, whether the database holds data); a schema older than the
    identity table (or none at all) has no identity."""
    tables = set(inspect(engine).get_table_names())
    with Session(engine, expire_on_commit=False) as db:
        recorded = _recorded(db) if DeploymentIdentity.__tablename__ in tables else None
        in_use = User.__tablename__ in tables and db.scalars(select(User.id).limit(1)).first()
    return recorded, bool(in_use)


def _verify(data_dir: Path, recorded: DeploymentIdentity, local: LocalKeys) -> None:
    ca, signer = local
    expected = Identity(recorded.ca_fingerprint, recorded.audit_public_key)
    found = Identity(ca.fingerprint if ca else "", signer.public_key if signer else "")
    if found != expected:
        raise IdentityError(
            f"{data_dir} does not hold this deployment's keys (the database expects CA "
            f"{expected.ca_fingerprint[:16]}…, audit key {expected.audit_public_key[:12]}…; "
            f"found {_describe(ca, signer)}): " + _fix(data_dir)
        )


def _refuse_unknown(data_dir: Path, in_use: bool, local: LocalKeys) -> None:
    """A database with data but no recorded identity (made before identities were
    recorded) is adopted only by a data directory that has both keys."""
    if in_use and None in local:
        raise IdentityError(
            f"the database is in use but {data_dir} holds {_describe(*local)}: start this "
            "replica with the data directory the database was made with, or " + _fix(data_dir)
        )


def check_before_migrating(settings: Settings, engine: Engine) -> None:
    """Refuse a data directory that is not this deployment's before anything is written:
    migrations would otherwise run (and seal secrets) with this directory's keys."""
    recorded, in_use = _recorded_if_any(engine)
    local = _local(settings)
    if recorded is not None:
        _verify(settings.data_dir, recorded, local)
    else:
        _refuse_unknown(settings.data_dir, in_use, local)


def ensure_identity(settings: Settings, engine: Engine, now: datetime) -> pki.CertificateAuthority:
    """After migrating: the deployment's CA, checking this data directory holds the
    recorded keys (recording, or minting for a new deployment, when none are recorded).
    Raises ``IdentityError``."""
    recorded, in_use = _recorded_if_any(engine)
    ca, signer = _local(settings)
    if recorded is None:
        _refuse_unknown(settings.data_dir, in_use, (ca, signer))
        ca = ca or pki.load_or_create_ca(settings.data_dir, now)
        signer = signer or Signer.load_or_create(settings.signing_key_path)
        recorded = _record(
            engine,
            DeploymentIdentity(
                id=IDENTITY_ROW,
                ca_fingerprint=ca.fingerprint,
                ca_certificate=ca.certificate_pem,
                audit_public_key=signer.public_key,
                recorded_at=now,
            ),
        )
    _verify(settings.data_dir, recorded, (ca, signer))
    assert ca is not None
    return ca


def _secrets_key_path(settings: Settings) -> Path:
    return secret_key.configured_key_file(settings) or settings.data_dir / secret_key.KEY_FILE


def export_keys(settings: Settings) -> dict[str, Any]:
    """The key material a replica needs: CA certificate and key, audit-signing key, and
    the key sealing secrets at rest (``broker.secret_key``)."""
    data_dir = settings.data_dir
    try:
        return {
            "format": KEYS_FORMAT,
            "ca_cert": (data_dir / pki.CA_CERT_FILE).read_text(),
            "ca_key": (data_dir / pki.CA_KEY_FILE).read_text(),
            "audit_signing_key": settings.signing_key_path.read_text(),
            "secrets_key": _secrets_key_path(settings).read_text(),
        }
    except FileNotFoundError as exc:
        missing = Path(str(exc.filename)).name
        raise IdentityError(f"{data_dir} has no complete key set ({missing} missing)") from None


def write_secret(path: Path, text: str) -> None:
    """A new owner-only file (mode 0600 from creation); an existing file is kept."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path} exists; choose a new file name") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def import_keys(settings: Settings, document: str) -> Identity:
    """Write exported keys into a data directory that has none (or the same ones)."""
    try:
        keys = json.loads(document)
        if keys.get("format") != KEYS_FORMAT:
            raise ValueError(f"format is not {KEYS_FORMAT}")
        files = {
            settings.data_dir / pki.CA_CERT_FILE: str(keys["ca_cert"]),
            settings.data_dir / pki.CA_KEY_FILE: str(keys["ca_key"]),
            settings.signing_key_path: str(keys["audit_signing_key"]),
            settings.data_dir / secret_key.KEY_FILE: str(keys["secrets_key"]),
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IdentityError(f"not an exported ztb key set: {exc}") from None
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    clashing = [p.name for p, text in files.items() if p.exists() and p.read_text() != text]
    if clashing:
        raise IdentityError(
            f"{settings.data_dir} already holds other keys ({', '.join(clashing)}); "
            "import into an empty data directory"
        )
    for path, text in files.items():
        if not path.exists():
            write_secret(path, text)
    (settings.data_dir / pki.CA_CERT_FILE).chmod(0o644)
    ca, signer = _local(settings)
    assert ca is not None and signer is not None
    return Identity(ca.fingerprint, signer.public_key)
