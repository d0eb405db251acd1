"""The request model's public import path (`shared.models.ReimageRequest`), kept for tools that use it.

The model lives in `shared/domain/request.py` and the ARM call it builds in `shared/domain/arm_call.py`;
nothing inside `shared/` imports this module (import-linter checks).
"""

from shared.domain.arm_call import ArmCall, ReimageOperation
from shared.domain.request import OsProfile, ReimageRequest, parse_request

__all__ = ["ArmCall", "OsProfile", "ReimageOperation", "ReimageRequest", "parse_request"]
