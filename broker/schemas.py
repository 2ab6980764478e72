"""Request bodies. Unknown fields are refused, so a typo never passes silently."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["admin", "homeowner", "technician"]
MAX_GRANTS = 64
# A TOTP code is exactly six ASCII digits (RFC 6238 as authenticator apps show it); anything
# else is refused by the schema, before any password or secret is looked at.
TOTP_CODE_PATTERN = r"^[0-9]{6}$"
TotpDigits = Annotated[str, Field(pattern=TOTP_CODE_PATTERN)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Login(Body):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    totp: TotpDigits | None = None


class NewPassword(Body):
    password: str = Field(min_length=10, max_length=1024)


class TotpCode(Body):
    code: TotpDigits


class NewUser(Body):
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)
    role: Role
    password: str | None = Field(default=None, min_length=10, max_length=1024)


class NewToken(Body):
    name: str = Field(default="", max_length=64)
    ttl_s: int | None = Field(default=None, gt=0, le=365 * 24 * 3600)


class NewHome(Body):
    name: str = Field(max_length=64)
    owner: str = Field(max_length=254)
    lan: str = Field(max_length=64)
    router_ip: str | None = Field(default=None, max_length=64)
    tunnel_pool: str | None = Field(default=None, max_length=64)
    endpoint: str | None = Field(default=None, max_length=255)
    webhook_url: str | None = Field(default=None, max_length=2048)


class HomePatch(Body):
    endpoint: str | None = Field(default=None, max_length=255)
    webhook_url: str | None = Field(default=None, max_length=2048)
    require_totp_for_approval: bool | None = None


class Ttl(Body):
    ttl_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)


class NewDevice(Body):
    name: str = Field(max_length=64)
    ip: str = Field(max_length=64)
    mac: str | None = Field(default=None, max_length=17)


class DevicePatch(Body):
    name: str | None = Field(default=None, max_length=64)
    ip: str | None = Field(default=None, max_length=64)
    mac: str | None = Field(default=None, max_length=17)


class NewSession(Body):
    home: str = Field(max_length=64)
    grants: list[str] = Field(min_length=1, max_length=MAX_GRANTS)
    duration_s: int
    reason: str = Field(min_length=1, max_length=500)
    public_key: str | None = Field(default=None, max_length=64)


class Approval(Body):
    duration_s: int | None = None
    totp: TotpDigits | None = None


class Reason(Body):
    reason: str = Field(default="", max_length=500)


class MoreGrants(Body):
    grants: list[str] = Field(min_length=1, max_length=MAX_GRANTS)


class Enrollment(Body):
    token: str = Field(max_length=256)
    csr_pem: str = Field(max_length=16384)
    wg_public_key: str = Field(max_length=64)
    interface: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,15}$")
    listen_port: int = Field(ge=1, le=65535)
    endpoint: str = Field(max_length=255)


class Renewal(Body):
    csr_pem: str = Field(max_length=16384)
