"""The access policy as data: roles, resource categories and grant rules.

The default policy ships as ``default_policy.json`` beside this module; a deployment
replaces it with ``SMARTMED_ACCESS_POLICY_FILE`` (same format). Nothing about who may see
what is written as ``if`` statements elsewhere: :mod:`smartmed.access.guard` interprets
this document, :mod:`smartmed.access.grants` derives grants with its FHIRPath rules.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Category = Literal["clinical", "directory", "audit", "system", "other"]
PatientRelation = Literal[
    "self", "delegation", "care-team", "sharing", "referral", "visit", "break-glass"
]
ResourceRelation = Literal["pharmacy"]
LETTERS = frozenset("cruds")
DEFAULT_POLICY = Path(__file__).with_name("default_policy.json")


class RolePolicy(BaseModel):
    """What one role may do: permissions per category and whose records it reaches."""

    model_config = ConfigDict(extra="forbid")

    patients: list[PatientRelation] = Field(default_factory=list)
    resources: list[ResourceRelation] = Field(default_factory=list)
    permissions: dict[Category, str] = Field(default_factory=dict)
    aggregate_only: bool = False  # counts only, small counts suppressed
    organization_scoped: list[Category] = Field(default_factory=list)

    @field_validator("permissions")
    @classmethod
    def _letters(cls, value: dict[str, str]) -> dict[str, str]:
        for category, letters in value.items():
            bad = set(letters) - LETTERS
            if bad:
                raise ValueError(f"{category}: unknown permission letters {''.join(sorted(bad))}")
        return value

    def allows(self, category: Category, letter: str) -> bool:
        return letter in self.permissions.get(category, "")


class GrantRule(BaseModel):
    """How a kind of resource grants access: FHIRPath expressions over the resource."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    source: str  # resource type
    when: str = "true"
    patient: str  # -> "Patient/<id>" references
    grantee: str  # -> references of who gets access
    period: str | None = None  # -> a Period
    from_: str | None = Field(default=None, alias="from")  # or separate start/end paths
    to: str | None = None
    actions: str | None = None  # -> delegated action codes
    default_days: int | None = None  # validity when the resource gives no end
    extend_days: int = 0  # validity after the end (a visit's follow-up)
    resource_only: bool = False  # grant the resource itself, not the patient's records


class Policy(BaseModel):
    """A whole access policy document."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    categories: dict[Category, list[str]] = Field(default_factory=dict)
    small_count_threshold: int = Field(default=5, ge=0)
    break_glass_hours: float = Field(default=4, gt=0, le=72)
    roles: dict[str, RolePolicy]
    grants: list[GrantRule] = Field(default_factory=list)
    # Resource types outside the official Patient compartment that still belong to one
    # patient's record, with the reference parameters that name the patient (a
    # family-doctor Contract): they are then clinical records like the compartment's.
    patient_links: dict[str, list[str]] = Field(default_factory=dict)
    # What a family representative may write for a member, by resource type: the
    # delegated action the member's Consent must name (others: only one's own records).
    delegated_writes: dict[str, str] = Field(default_factory=dict)

    def category_of(self, type_: str, clinical_types: frozenset[str]) -> Category:
        for category, types in self.categories.items():
            if type_ in types:
                return category
        return "clinical" if type_ in clinical_types else "other"


@lru_cache(maxsize=8)
def load_policy(path: Path | None = None) -> Policy:
    """The policy at ``path`` (default: the shipped one); a bad file fails loudly."""
    source = path or DEFAULT_POLICY
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the access policy {source}: {exc}") from exc
    return Policy.model_validate_json(text)
