"""Four eyes: is the approver a second person? A pure decision over two principals and the configured mapping.

A principal is its identity, not its name. Where both sides have one (an Entra object id from App Service
authentication or Teams, a Slack team + user id), the identities decide, whatever the names say (a renamed UPN is
still the same person). Identities from systems that cannot be compared (a Slack user and an Entra user) decide
nothing by themselves: the approval is refused unless APPROVER_IDENTITY_MAP says who the approver is in the
requester's system (and then the two are compared there). Where only names
exist (an unverified requester or approver), the names are compared NFKC-normalised, case-folded and with their
whitespace trimmed and collapsed, so a trailing space or a full-width letter is not a second person. Names are
compared in every case: an equal name is refused even when identities differ.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

from shared.domain.errors import ErrorCode, ReimagerError
from shared.domain.principal import Principal, identity_system

# Scripts with letters that look like Latin ones. An unverified name mixing Latin with one of these cannot be told
# from a look-alike of another name (UTS #39's "mixed script" test, by the Unicode character names).
_LATIN_LOOKALIKE_SCRIPTS = frozenset({"CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC", "LISU"})
_SYSTEM_NAMES = {"entra": "Entra object id", "slack": "Slack team and user", "teams": "Teams account"}


@dataclass(frozen=True)
class Refusal:
    """Why the approver is not a second person: the error code, the rule that refused, and what to say."""

    code: ErrorCode
    rule: str
    message: str

    def error(self) -> ReimagerError:
        return ReimagerError(self.code, self.message, target="approvedBy", extra={"rule": self.rule})


def normal_name(name: str) -> str:
    """A name as compared: NFKC (full-width and compatibility letters become the plain ones), case-folded (then
    NFKC again: folding can un-normalise), whitespace trimmed and runs of it collapsed."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return " ".join(folded.split())


def _scripts(name: str) -> set[str]:
    return {unicodedata.name(c, "UNKNOWN").split(" ", 1)[0] for c in name if c.isalpha()}


def mixed_script(name: str) -> bool:
    """Latin letters mixed with letters of a script that has Latin look-alikes (a Cyrillic "a", U+0430, in "alice")."""
    scripts = _scripts(unicodedata.normalize("NFKC", name))
    return "LATIN" in scripts and bool(scripts & _LATIN_LOOKALIKE_SCRIPTS)


def _known(identity: str, mapping: Mapping[str, frozenset[str]]) -> frozenset[str]:
    return frozenset({identity, *mapping.get(identity, ())})


def _describe(identity: str) -> str:
    return f"{_SYSTEM_NAMES.get(identity_system(identity), identity_system(identity))} {identity.split(':', 1)[1]}"


def _by_identity(requester: str, approver: str, mapping: Mapping[str, frozenset[str]]) -> Refusal | None:
    mine, theirs = _known(requester, mapping), _known(approver, mapping)
    same = mine & theirs
    if same:
        how = ("APPROVER_IDENTITY_MAP says they are one person" if requester != approver
               else f"the same {_describe(next(iter(same)))}")
        return Refusal(ErrorCode.SELF_APPROVAL_NOT_ALLOWED, "sameIdentity", "The requester cannot also approve: "
                       f"requester and approver are the same person ({how}). A second person must approve.")
    # The approver must be known in the requester's own system: natively, or by the map (an approver's unmapped
    # account in another system could be anyone, the requester's second account included).
    if identity_system(requester) not in {identity_system(i) for i in theirs}:
        return Refusal(ErrorCode.IDENTITIES_NOT_COMPARABLE, "notComparable", f"The requester ({requester}) and the "
                       f"approver ({approver}) were verified by identity systems that cannot be compared, so "
                       "reimager cannot tell that they are two people. Approve from the requester's system, or "
                       "add the approver to APPROVER_IDENTITY_MAP.")
    return None


def second_person(requester: Principal, approver: Principal,
                  mapping: Mapping[str, frozenset[str]]) -> Refusal | None:
    """None when `approver` is a second person; else why not. `approver` is already known to be verified, or
    unverified names are allowed (APPROVAL_ALLOW_UNVERIFIED)."""
    if normal_name(requester.name) and normal_name(requester.name) == normal_name(approver.name):
        return Refusal(ErrorCode.SELF_APPROVAL_NOT_ALLOWED, "sameName", f"{approver.name.strip()} asked for this "
                       "reimage and cannot also approve it (the names are the same once normalised): a second "
                       "person must.")
    if requester.identity is not None and approver.identity is not None:
        return _by_identity(requester.identity, approver.identity, mapping)
    if requester.is_verified and approver.is_verified and (requester.identity or approver.identity):
        # one verified side has an identity, the other only a name: nothing to compare the identity with
        return Refusal(ErrorCode.IDENTITIES_NOT_COMPARABLE, "notComparable", f"The requester ({requester.name}) "
                       f"or the approver ({approver.name}) was verified without an identity that can be compared "
                       "(an Entra object id, a Slack team and user), so reimager cannot tell that they are two "
                       "people. A second person with such an identity must approve.")
    if not approver.is_verified and mixed_script(approver.name):
        return Refusal(ErrorCode.APPROVER_NOT_VERIFIED, "mixedScript", "An unverified approver's name mixes Latin "
                       "letters with look-alikes from another script, so it cannot be told from another name; a "
                       "verified person must approve.")
    return None
