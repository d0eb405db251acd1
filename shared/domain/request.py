"""The request model (`ReimageRequest`): what every entry surface validates into.

The wire format is camelCase JSON, like ARM's. Unknown fields are rejected. Secrets are
`SecretStr` and are unwrapped only in `ArmCall.wire_body()`, the body sent to ARM.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SecretStr,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.domain.arm_call import ArmCall, OsType, ReimageOperation
from shared.domain.errors import DetailCode, ErrorCode, ErrorDetail, FieldErrors, ReimagerError, invalid_request
from shared.domain.targets import (
    INSTANCE_ID_PATTERN,
    INSTANCE_ID_RULE,
    MEMBER_NAME_PATTERN,
    MEMBER_NAME_RULE,
    Target,
    TargetError,
    TargetKind,
    build_target,
    parse_target,
    valid_instance_id,
    valid_member_name,
)

# Seed 000/001/002: values ARM refuses outright.
DISALLOWED_PASSWORDS = frozenset(
    {
        "abc@123",
        "P@$$w0rd",
        "P@ssw0rd",
        "P@ssword123",
        "Pa$$word",
        "pass@word1",
        "Password!",
        "Password1",
        "Password22",
        "iloveyou!",
    }
)
PASSWORD_LENGTH: dict[str, tuple[int, int]] = {"Windows": (8, 123), "Linux": (6, 72)}
CUSTOM_DATA_MAX_BYTES = 65535
HARD_MAX_INSTANCES = 1000  # a scale set holds at most 1,000 VMs

_REQUEST_ID = r"^[A-Za-z0-9._:-]{1,128}$"
_EXACT_VERSION = r"^[0-9]{1,10}(\.[0-9]{1,10}){0,3}$"
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def _instance_id(value: Any) -> str:
    """A canonical instance id, or a Flexible set's member VM name (which set it is, and so which form is right, is
    known only at preflight): a JSON string, as ARM's `instanceIds` is. A number is refused, not converted: the
    caller's own tooling would otherwise disagree with ARM, the ledger and the events about what an id is."""
    if isinstance(value, str) and (valid_instance_id(value) or valid_member_name(value)):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'{INSTANCE_ID_RULE}; send the number as a JSON string ("{value}")')
    raise ValueError(f"{INSTANCE_ID_RULE}; {MEMBER_NAME_RULE}")


InstanceId = Annotated[
    str,
    PlainValidator(_instance_id, json_schema_input_type=Annotated[
        str, Field(pattern=f"^(?:{INSTANCE_ID_PATTERN}|{MEMBER_NAME_PATTERN})$")]),
]


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        hide_input_in_errors=True,  # error text must never echo a secret
        frozen=True,
    )


def _complexity_classes(password: str) -> int:
    return sum(
        bool(re.search(p, password)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[\W_]")
    )


class OsProfile(_Wire):
    """OSProfileProvisioningData: only for reimaging a non-ephemeral OS disk."""

    admin_password: SecretStr | None = Field(
        None, description="6-123 characters (Linux 6-72, Windows 8-123), 3 of 4 character classes."
    )
    custom_data: SecretStr | None = Field(
        None, description="Base64; decodes to at most 65,535 bytes. Treated as a secret."
    )

    @field_validator("admin_password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        pw = value.get_secret_value()
        lo, hi = PASSWORD_LENGTH["Linux"][0], PASSWORD_LENGTH["Windows"][1]
        if not lo <= len(pw) <= hi:
            raise ValueError(f"adminPassword must be {lo} to {hi} characters long")
        if _complexity_classes(pw) < 3:
            raise ValueError(
                "adminPassword needs 3 of: a lower-case letter, an upper-case letter, a digit, "
                "a special character"
            )
        if pw in DISALLOWED_PASSWORDS:
            raise ValueError("adminPassword is one of the values Azure disallows")
        return value

    @field_validator("custom_data")
    @classmethod
    def _custom_data(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if not raw:
            raise ValueError("customData must not be empty")
        if not _BASE64.fullmatch(raw):
            raise ValueError("customData must be valid base64")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("customData must be valid base64") from None
        if len(decoded) > CUSTOM_DATA_MAX_BYTES:
            raise ValueError(f"customData decodes to more than {CUSTOM_DATA_MAX_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> OsProfile:
        if self.admin_password is None and self.custom_data is None:
            raise ValueError("osProfile needs adminPassword or customData")
        return self


class ReimageRequest(_Wire):
    """A request to reimage a VM, a scale set's instances, or one scale set instance."""

    target: str | None = Field(
        None, description="ARM id of a VM, a VM scale set, or a scale set instance.", max_length=1024
    )
    subscription_id: str | None = Field(None, description="With resourceGroupName; defaults from settings.")
    resource_group_name: str | None = Field(None, max_length=90)
    vm_name: str | None = Field(None, max_length=80)
    vm_scale_set_name: str | None = Field(None, max_length=80)
    instance_ids: list[InstanceId] | None = Field(
        None,
        min_length=1,
        description='Scale sets only. Non-empty list of canonical decimal ids as JSON strings, such as "7" (no '
        "leading zeros), no duplicates. A JSON number is refused. A Flexible scale set's members are named by their "
        'VM names (starting with a letter), such as "workers_3f2a9c1e".',
    )
    all_instances: StrictBool = Field(
        False, description="Scale sets only. Must be true to reimage every instance."
    )
    all_disks: StrictBool = Field(
        False, description="Use reimageall: reimage data disks too (managed disks only)."
    )
    temp_disk: StrictBool | None = Field(None, description="Ephemeral OS disk only.")
    force_update_os_disk_for_ephemeral: StrictBool | None = Field(
        None, alias="forceUpdateOSDiskForEphemeral", description="Scale sets with ephemeral OS disk only."
    )
    exact_version: str | None = Field(None, pattern=_EXACT_VERSION, description="For example 10.0.14393.0")
    os_profile: OsProfile | None = None
    request_id: str | None = Field(None, pattern=_REQUEST_ID, description="Idempotency key.")
    dry_run: StrictBool = Field(False, description="Validate and plan; never calls the reimage API.")
    requested_by: str | None = Field(None, max_length=256)
    reason: str | None = Field(None, max_length=256)
    correlation_id: str | None = Field(None, min_length=1, max_length=256)
    capture_evidence: Literal["off", "bootdiagnostics", "snapshot"] | None = Field(
        None, description="What to capture before the reimage wipes the OS disk: off, bootdiagnostics (the serial "
        "console log and the instance view) or snapshot (and an incremental snapshot of a managed OS disk). Default: "
        "the EVIDENCE setting.")

    _target: Target | None = PrivateAttr(None)

    @field_validator("instance_ids")
    @classmethod
    def _instance_ids(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if len(set(value)) != len(value):  # canonical strings: equal ids are equal strings
            raise ValueError("instanceIds has duplicates")
        limit = (info.context or {}).get("max_instances", HARD_MAX_INSTANCES)
        if len(value) > limit:
            raise ValueError(f"instanceIds has {len(value)} ids; at most {limit} are allowed")
        return value

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> ReimageRequest:
        parts = {"subscriptionId": self.subscription_id, "resourceGroupName": self.resource_group_name,
                 "vmName": self.vm_name, "vmScaleSetName": self.vm_scale_set_name}
        given = [name for name, value in parts.items() if value is not None]
        try:
            if self.target is not None:
                if given:
                    raise FieldErrors([(name, "give either target or subscriptionId/resourceGroupName/"
                                        "vmName|vmScaleSetName, not both") for name in ["target", *given]])
                target = parse_target(self.target)
            elif self.resource_group_name is None:
                raise FieldErrors([("target", "target is required: the ARM id of a VM, a scale set or a scale set "
                                    "instance (or resourceGroupName with vmName or vmScaleSetName)")])
            elif (self.vm_name is None) == (self.vm_scale_set_name is None):
                raise FieldErrors([(name, "give exactly one of vmName and vmScaleSetName")
                                   for name in ("vmName", "vmScaleSetName")])
            else:
                sub = self.subscription_id or (info.context or {}).get("default_subscription_id")
                if not sub:
                    raise FieldErrors([("subscriptionId", "subscriptionId is required: no default subscription "
                                        "is configured")])
                target = build_target(sub, self.resource_group_name, self.vm_name, self.vm_scale_set_name)
        except TargetError as exc:
            raise FieldErrors([(exc.field, str(exc))]) from None
        self._check_kind(target)
        self._target = target
        return self

    def _check_kind(self, target: Target) -> None:
        problems: list[tuple[str, str]] = []
        if target.kind is TargetKind.VM:
            for flag, name in (
                (self.instance_ids is not None, "instanceIds"),
                (self.all_instances, "allInstances"),
                (self.force_update_os_disk_for_ephemeral is not None, "forceUpdateOSDiskForEphemeral"),
                (self.all_disks, "allDisks"),
            ):
                if flag:
                    problems.append((name, f"{name} applies to scale sets only, and the target is a VM"))
        elif target.kind is TargetKind.VMSS:
            if self.instance_ids is None and not self.all_instances:
                problems.append(("instanceIds", "instanceIds is required for a scale set; to reimage every "
                                 "instance, set allInstances: true"))
            if self.instance_ids is not None and self.all_instances:
                problems += [(name, "give instanceIds or allInstances: true, not both")
                             for name in ("instanceIds", "allInstances")]
        else:
            problems += [(name, f"the target names one instance; {name} does not apply")
                         for name, given in (("instanceIds", self.instance_ids is not None),
                                             ("allInstances", self.all_instances)) if given]
        if self.all_disks:
            problems += [
                (n, f"allDisks (reimageall) takes no {n}")
                for n, v in (
                    ("tempDisk", self.temp_disk),
                    ("exactVersion", self.exact_version),
                    ("osProfile", self.os_profile),
                    ("forceUpdateOSDiskForEphemeral", self.force_update_os_disk_for_ephemeral),
                )
                if v is not None
            ]
        if problems:
            raise FieldErrors(problems)

    @property
    def resolved_target(self) -> Target:
        assert self._target is not None
        return self._target

    @property
    def instance_count(self) -> int | None:
        """Instances named by the request; None means every instance of the scale set."""
        if self.resolved_target.kind is TargetKind.VMSS_INSTANCE:
            return 1
        if self.instance_ids is not None:
            return len(self.instance_ids)
        return None if self.all_instances else 0

    @property
    def effective_instance_ids(self) -> list[str] | None:
        t = self.resolved_target
        if t.kind is TargetKind.VMSS_INSTANCE:
            assert t.instance_id is not None
            return [t.instance_id]
        return list(self.instance_ids) if self.instance_ids is not None else None

    def check_against(self, os_type: OsType | None, ephemeral_os_disk: bool) -> None:
        """Rules that need the target's model (from the preflight GET). Raises 400."""
        details: list[ErrorDetail] = []
        if self.temp_disk and not ephemeral_os_disk:
            details.append(
                ErrorDetail(
                    code=DetailCode.INVALID_VALUE,
                    target="tempDisk",
                    message="tempDisk is supported only where the OS disk is ephemeral",
                )
            )
        if self.force_update_os_disk_for_ephemeral and not ephemeral_os_disk:
            details.append(
                ErrorDetail(
                    code=DetailCode.INVALID_VALUE,
                    target="forceUpdateOSDiskForEphemeral",
                    message="forceUpdateOSDiskForEphemeral is supported only where the OS disk is ephemeral",
                )
            )
        if self.os_profile is not None and ephemeral_os_disk:
            details.append(
                ErrorDetail(
                    code=DetailCode.INVALID_VALUE,
                    target="osProfile",
                    message="osProfile is for reimaging a non-ephemeral OS disk, and this target's OS disk "
                    "is ephemeral",
                )
            )
        pw = self.os_profile.admin_password if self.os_profile else None
        if pw is not None and os_type is not None:
            lo, hi = PASSWORD_LENGTH[os_type]
            if not lo <= len(pw.get_secret_value()) <= hi:
                details.append(
                    ErrorDetail(
                        code=DetailCode.INVALID_VALUE,
                        target="osProfile.adminPassword",
                        message=f"adminPassword for {os_type} must be {lo} to {hi} characters long",
                    )
                )
        if details:
            raise ReimagerError(ErrorCode.INVALID_REQUEST,
                "The request does not fit the target's configuration.",
                target=details[0].target if len(details) == 1 else None,
                details=details,
            )

    def arm_call(self, api_version: str, operation: ReimageOperation | None = None, *,
                 instance_ids: list[str] | None = None) -> ArmCall:
        """The ARM call for this request. VMSS instances use the scale-set reimage by default.

        `instance_ids` are the explicit instances the policy checked (allInstances resolved at
        preflight): the POST names exactly those, so a set that grows meanwhile is not reimaged wider.
        """
        t = self.resolved_target
        if operation is None:
            if t.kind is TargetKind.VM:
                operation = ReimageOperation.VM_REIMAGE
            else:
                operation = ReimageOperation.VMSS_REIMAGE_ALL if self.all_disks else ReimageOperation.VMSS_REIMAGE
        self._check_operation(operation)
        body: dict[str, Any] = {}
        if operation in (ReimageOperation.VMSS_REIMAGE, ReimageOperation.VMSS_REIMAGE_ALL):
            ids = instance_ids if instance_ids is not None else self.effective_instance_ids
            if not ids:  # an omitted or empty list means "every instance" to ARM: never send one
                raise AssertionError("refusing to build a scale-set reimage with no instanceIds")
            body["instanceIds"] = list(ids)
        if operation not in (ReimageOperation.VMSS_REIMAGE_ALL, ReimageOperation.VMSS_VM_REIMAGE_ALL):
            if self.force_update_os_disk_for_ephemeral is not None:
                body["forceUpdateOSDiskForEphemeral"] = self.force_update_os_disk_for_ephemeral
            if self.temp_disk is not None:
                body["tempDisk"] = self.temp_disk
            if self.exact_version is not None:
                body["exactVersion"] = self.exact_version
            if self.os_profile is not None:
                profile: dict[str, Any] = {}
                if self.os_profile.admin_password is not None:
                    profile["adminPassword"] = self.os_profile.admin_password
                if self.os_profile.custom_data is not None:
                    profile["customData"] = self.os_profile.custom_data
                body["osProfile"] = profile
        return ArmCall(operation, t, api_version, body or None)

    def _check_operation(self, operation: ReimageOperation) -> None:
        kind = self.resolved_target.kind
        allowed = {
            TargetKind.VM: {ReimageOperation.VM_REIMAGE},
            TargetKind.VMSS: {ReimageOperation.VMSS_REIMAGE, ReimageOperation.VMSS_REIMAGE_ALL},
            TargetKind.VMSS_INSTANCE: {
                ReimageOperation.VMSS_REIMAGE,
                ReimageOperation.VMSS_REIMAGE_ALL,
                ReimageOperation.VMSS_VM_REIMAGE,
                ReimageOperation.VMSS_VM_REIMAGE_ALL,
            },
        }[kind]
        if operation not in allowed:
            raise ValueError(f"{operation.value} does not apply to a {kind.value} target")


def parse_request(
    data: Any,
    *,
    default_subscription_id: str | None = None,
    max_instances: int = HARD_MAX_INSTANCES,
) -> ReimageRequest:
    """Validate wire data into a ReimageRequest, or raise a 400 ReimagerError with field details."""
    if not isinstance(data, dict):
        raise ReimagerError(ErrorCode.INVALID_REQUEST,
            "The body must be a JSON object with a target: the ARM id of a VM, a scale set or a scale set "
            'instance, for example {"target": "/subscriptions/{id}/resourceGroups/{group}/providers/'
            'Microsoft.Compute/virtualMachines/{name}"}, or resourceGroupName with vmName or vmScaleSetName. '
            "See docs/openapi.yaml.",
        )
    try:
        return ReimageRequest.model_validate(
            data,
            context={"default_subscription_id": default_subscription_id, "max_instances": max_instances},
        )
    except ValidationError as exc:
        raise invalid_request(exc, model=ReimageRequest) from None
