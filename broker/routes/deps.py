"""Request parts several route modules read: the caller and their step-up proof."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from .. import stepup
from ..auth import Principal, broker_of, current_user

Me = Annotated[Principal, Depends(current_user)]


def step_up_proof(
    request: Request,
    principal: Me,
    given: Annotated[
        str | None,
        Header(
            alias=stepup.HEADER,
            max_length=1024,
            description="A current TOTP code, or the password where TOTP is off: needed by "
            "changes that lower protection.",
        ),
    ] = None,
) -> stepup.Proof:
    return stepup.proof_for(broker_of(request), principal, given)


StepUp = Annotated[stepup.Proof, Depends(step_up_proof)]
