"""Statistics of a 20,000-resident county (generation only, no database) against the sources.

Tolerances are not chosen by hand: each observed count must lie within ``z`` standard
deviations of its binomial expectation, n·p ± z·√(n·p·(1−p)), with ``z`` the two-sided
normal quantile for a family-wise false-alarm rate of 0.1 % per test, Bonferroni-divided
over the cells the test checks (so a multinomial table of k cells uses α = 0.001 / k per
cell). With n in the thousands the normal approximation of the binomial is accurate. The
expected shares are the published figures, written here from the sources (not imported
from the generator) so that a wrong constant in the generator fails the test.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from statistics import NormalDist, fmean
from typing import Any

import orjson
import pytest

from smartmed.demo import idcard
from smartmed.demo.generator import (
    CARE_TEAM_SYSTEM,
    DEFAULT_AS_OF,
    ORG_SYSTEM,
    RESIDENT_ID_SYSTEM,
    generate_county,
)
from smartmed.demo.population import age_on

RESIDENTS = 20_000
SEED = 2020
FAMILY_ALPHA = 0.001

# 7th national census (2020), 国家统计局 公报第五号 and 主要数据: shares in %.
CENSUS_AGE_BANDS = {(0, 14): 17.95, (15, 59): 63.35, (60, 64): 18.70 - 13.50, (65, 200): 13.50}
CENSUS_MALE = 0.5124
# Report on Nutrition and Chronic Diseases of Chinese Residents 2020: adults >= 18.
HYPERTENSION = 0.275
DIABETES = 0.119
# China Hypertension Survey (Wang Z et al. Circulation 2018): aware 46.9, treated 40.7,
# controlled 15.3 % of hypertensives; every registered case counts as aware.
HT_TREATED = 0.407 / 0.469
HT_CONTROLLED = 0.153 / 0.407
# 2013 China Chronic Disease and Risk Factors Surveillance (Wang L et al. JAMA 2017).
DM_TREATED = 0.322 / 0.365
DM_CONTROLLED = 0.492
# Chiang V et al. BMC Med 2024 (drug allergy labels); Hu Y et al. Pediatr Int 2010 (food).
DRUG_ALLERGY = 0.0561
FOOD_ALLERGY_UNDER_3 = 0.077

ANTIHYPERTENSIVES = {"17767", "7417", "52175", "69749", "3827", "5487", "6918"}
ANTIDIABETICS = {"6809", "16681", "25789", "274783"}


def z_for(cells: int) -> float:
    """Two-sided normal quantile for the family-wise rate shared by ``cells`` checks."""
    return NormalDist().inv_cdf(1 - FAMILY_ALPHA / (2 * cells))


def assert_binomial(observed: int, n: int, p: float, *, cells: int = 1, what: str = "") -> None:
    """``observed`` successes out of ``n`` agree with probability ``p``."""
    expected = n * p
    bound = z_for(cells) * math.sqrt(n * p * (1 - p))
    assert abs(observed - expected) <= bound, (
        f"{what}: {observed}/{n} = {observed / n:.4f}, expected {p:.4f} "
        f"(count {expected:.0f} ± {bound:.0f})"
    )


@dataclass
class Resident:
    patient: dict[str, Any]
    age: int
    conditions: dict[str, str] = field(default_factory=dict)  # ICD-10 -> fullUrl
    systolic: list[float] = field(default_factory=list)
    diastolic: list[float] = field(default_factory=list)
    hba1c: list[float] = field(default_factory=list)
    glucose: list[float] = field(default_factory=list)
    drugs: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # by reason
    allergies: list[dict[str, Any]] = field(default_factory=list)
    encounters: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class County:
    bundles: list[dict[str, Any]]
    residents: dict[str, Resident]
    households: int
    digest: str

    @property
    def adults(self) -> list[Resident]:
        return [r for r in self.residents.values() if r.age >= 18]


def _summarise(bundles: list[dict[str, Any]]) -> County:
    residents: dict[str, Resident] = {}
    for bundle in bundles[1:]:
        entries = bundle["entry"]
        for item in entries:
            res = item["resource"]
            if res["resourceType"] == "Patient":
                age = age_on(date.fromisoformat(res["birthDate"]), DEFAULT_AS_OF)
                residents[item["fullUrl"]] = Resident(res, age)
        by_url = {item["fullUrl"]: item["resource"] for item in entries}
        for item in entries:
            res = item["resource"]
            kind = res["resourceType"]
            if kind == "Condition":
                code = res["code"]["coding"][0]["code"]
                residents[res["subject"]["reference"]].conditions[code] = item["fullUrl"]
            elif kind == "AllergyIntolerance":
                residents[res["patient"]["reference"]].allergies.append(res)
            elif kind == "Encounter":
                residents[res["subject"]["reference"]].encounters.append(res)
            elif kind == "MedicationRequest":
                reason = by_url[res["reasonReference"][0]["reference"]]
                code = reason["code"]["coding"][0]["code"]
                drug = res["medicationCodeableConcept"]["coding"][0]["code"]
                residents[res["subject"]["reference"]].drugs[code].add(drug)
            elif kind == "Observation":
                who = residents[res["subject"]["reference"]]
                code = res["code"]["coding"][0]["code"]
                if code == "85354-9":
                    who.systolic.append(res["component"][0]["valueQuantity"]["value"])
                    who.diastolic.append(res["component"][1]["valueQuantity"]["value"])
                elif code == "4548-4":
                    who.hba1c.append(res["valueQuantity"]["value"])
                elif code == "14771-0":
                    who.glucose.append(res["valueQuantity"]["value"])
    digest = hashlib.sha256(b"".join(orjson.dumps(b) for b in bundles)).hexdigest()
    return County(bundles, residents, len(bundles) - 1, digest)


@pytest.fixture(scope="module")
def county() -> County:
    return _summarise(list(generate_county(residents=RESIDENTS, seed=SEED)))


def _bp_controlled(r: Resident) -> bool:
    return all(s < 140 and d < 90 for s, d in zip(r.systolic, r.diastolic, strict=True))


def _bp_uncontrolled(r: Resident) -> bool:
    return all(s >= 140 or d >= 90 for s, d in zip(r.systolic, r.diastolic, strict=True))


# -- determinism ------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(county: County) -> None:
    again = hashlib.sha256(
        b"".join(orjson.dumps(b) for b in generate_county(residents=RESIDENTS, seed=SEED))
    ).hexdigest()
    assert again == county.digest
    other = hashlib.sha256(
        b"".join(orjson.dumps(b) for b in generate_county(residents=RESIDENTS, seed=SEED + 1))
    ).hexdigest()
    assert other != county.digest


# -- population -------------------------------------------------------------------------


def test_age_sex_structure_follows_the_7th_census(county: County) -> None:
    residents = list(county.residents.values())
    assert len(residents) == RESIDENTS
    cells: Counter[tuple[tuple[int, int], bool]] = Counter()
    for r in residents:
        band = next(b for b in CENSUS_AGE_BANDS if b[0] <= r.age <= b[1])
        cells[(band, r.patient["gender"] == "male")] += 1
    table = [
        (band, male, share / 100 * (CENSUS_MALE if male else 1 - CENSUS_MALE))
        for band, share in CENSUS_AGE_BANDS.items()
        for male in (True, False)
    ]
    assert math.isclose(sum(p for *_, p in table), 1.0)
    for band, male, p in table:
        assert_binomial(
            cells[(band, male)],
            RESIDENTS,
            p,
            cells=len(table),
            what=f"ages {band} {'men' if male else 'women'}",
        )


def test_identity_numbers_households_and_villages(county: County) -> None:
    organisations = county.bundles[0]["entry"]
    org_by_code = {
        e["resource"]["identifier"][0]["value"]: e
        for e in organisations
        if e["resource"]["resourceType"] == "Organization"
    }
    url_to_code = {e["fullUrl"]: code for code, e in org_by_code.items()}
    served = {
        url_to_code[e["resource"]["managingOrganization"][0]["reference"]]
        for e in organisations
        if e["resource"]["resourceType"] == "CareTeam"
        and e["resource"]["identifier"][0]["system"] == CARE_TEAM_SYSTEM
    }
    seen_ids: set[str] = set()
    households: Counter[str] = Counter()
    for bundle in county.bundles[1:]:
        for item in bundle["entry"]:
            if item["resource"]["resourceType"] == "Patient":
                households[item["fullUrl"]] += 1
    assert set(households) == set(county.residents)
    assert set(households.values()) == {1}  # everyone in exactly one household
    for r in county.residents.values():
        (ident,) = r.patient["identifier"]
        assert ident["system"] == RESIDENT_ID_SYSTEM
        number = ident["value"]
        assert idcard.is_valid(number) and number not in seen_ids
        seen_ids.add(number)
        clinic = r.patient["managingOrganization"]["reference"].split("|")[1]
        assert r.patient["managingOrganization"]["reference"].startswith(
            f"Organization?identifier={ORG_SYSTEM}|"
        )
        village = org_by_code[clinic]["resource"]
        township = url_to_code[village["partOf"]["reference"]]
        assert township in served, f"{clinic} is in {township}, which has no team"


# -- conditions -------------------------------------------------------------------------


def test_condition_prevalence_among_adults(county: County) -> None:
    adults = county.adults
    assert all(not r.conditions for r in county.residents.values() if r.age < 18)
    for code, p in (("I10", HYPERTENSION), ("E11.9", DIABETES)):
        cases = sum(1 for r in adults if code in r.conditions)
        assert_binomial(cases, len(adults), p, cells=2, what=code)


def test_treatment_and_control_follow_the_surveys(county: County) -> None:
    ht = [r for r in county.adults if "I10" in r.conditions]
    dm = [r for r in county.adults if "E11.9" in r.conditions]
    ht_treated = [r for r in ht if r.drugs["I10"]]
    dm_treated = [r for r in dm if r.drugs["E11.9"]]
    assert_binomial(len(ht_treated), len(ht), HT_TREATED, cells=4, what="hypertension treated")
    assert_binomial(len(dm_treated), len(dm), DM_TREATED, cells=4, what="diabetes treated")
    ht_controlled = sum(1 for r in ht_treated if _bp_controlled(r))
    dm_controlled = sum(1 for r in dm_treated if all(v < 7.0 for v in r.hba1c))
    assert_binomial(ht_controlled, len(ht_treated), HT_CONTROLLED, cells=4, what="BP control")
    assert_binomial(dm_controlled, len(dm_treated), DM_CONTROLLED, cells=4, what="HbA1c control")


def test_readings_agree_with_prescriptions(county: County) -> None:
    """Each patient is controlled or not on every reading; the untreated never are."""
    for r in county.adults:
        assert r.systolic, "every adult has a blood pressure"
        if "I10" not in r.conditions:
            assert _bp_controlled(r)
            assert not r.drugs["I10"]
        elif not r.drugs["I10"]:
            assert _bp_uncontrolled(r)
        else:
            assert _bp_controlled(r) or _bp_uncontrolled(r)
        if "E11.9" in r.conditions:
            assert r.hba1c and r.glucose
            controlled = all(v < 7.0 for v in r.hba1c)
            assert controlled or all(v >= 7.0 for v in r.hba1c)
            assert all((g < 7.0) == controlled for g in r.glucose)
            if not r.drugs["E11.9"]:
                assert not controlled
        else:
            assert not r.hba1c and not r.glucose and not r.drugs["E11.9"]


def test_blood_pressure_falls_with_treatment_and_control(county: County) -> None:
    """Mean systolic: untreated > treated-uncontrolled > controlled > no hypertension.

    Each step must exceed z standard errors of the difference of the two means.
    """
    groups: dict[str, list[float]] = defaultdict(list)
    for r in county.adults:
        if "I10" not in r.conditions:
            key = "none"
        elif not r.drugs["I10"]:
            key = "untreated"
        else:
            key = "controlled" if _bp_controlled(r) else "treated"
        groups[key].append(fmean(r.systolic))
    order = ["untreated", "treated", "controlled", "none"]
    z = z_for(len(order) - 1)
    for high, low in zip(order, order[1:], strict=False):
        a, b = groups[high], groups[low]
        se = math.sqrt(_variance(a) / len(a) + _variance(b) / len(b))
        assert fmean(a) - fmean(b) > z * se, (high, low, fmean(a), fmean(b), se)


def _variance(values: list[float]) -> float:
    mean = fmean(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


# -- allergies, drugs, encounters ---------------------------------------------------------


def test_allergy_prevalence(county: County) -> None:
    residents = list(county.residents.values())
    drug = sum(1 for r in residents if any(a["category"] == ["medication"] for a in r.allergies))
    assert_binomial(drug, len(residents), DRUG_ALLERGY, cells=2, what="drug allergy labels")
    infants = [r for r in residents if r.age < 3]
    food = sum(1 for r in infants if any(a["category"] == ["food"] for a in r.allergies))
    assert_binomial(food, len(infants), FOOD_ALLERGY_UNDER_3, cells=2, what="infant food")
    assert all(a["category"] != ["food"] for r in residents if r.age >= 3 for a in r.allergies)


def test_prescriptions_fit_their_condition(county: County) -> None:
    for r in county.residents.values():
        assert {code for code, drugs in r.drugs.items() if drugs} <= set(r.conditions)
        assert r.drugs["I10"] <= ANTIHYPERTENSIVES
        assert r.drugs["E11.9"] <= ANTIDIABETICS
        if r.drugs["E11.9"]:
            assert "6809" in r.drugs["E11.9"]  # metformin first (CDS guideline 2020)
        allergens = {a["code"]["coding"][0]["code"] for a in r.allergies}
        assert not allergens & {d for ds in r.drugs.values() for d in ds}


def test_encounters_at_the_right_level_of_care(county: County) -> None:
    kinds_seen: Counter[tuple[str, str]] = Counter()
    for r in county.residents.values():
        uncontrolled = ("I10" in r.conditions and not _bp_controlled(r)) or (
            "E11.9" in r.conditions and not all(v < 7.0 for v in r.hba1c)
        )
        for encounter in r.encounters:
            kind = encounter["type"][0]["coding"][0]["code"]
            provider = encounter["serviceProvider"]["reference"].split("|")[1]
            level = provider[:2]
            if kind == "home-visit":  # a paid package's service (demo.contracting)
                assert encounter["class"]["code"] == "HH" and level == "TC"
                continue
            assert encounter["class"]["code"] == "AMB"
            kinds_seen[(kind, level)] += 1
            if kind == "chronic-follow-up":
                assert level in ("VC", "TC") and r.conditions
            elif kind in ("child-health-check", "elderly-health-check"):
                assert level == "TC"
                assert (r.age <= 8) if kind == "child-health-check" else (r.age >= 65)
            elif kind == "acute-visit":
                assert level == "VC" and not r.conditions
                assert encounter["reasonCode"][0]["coding"][0]["code"] == "J06.9"
            else:
                assert kind == "specialist-outpatient" and uncontrolled
                assert provider in ("CH-CARD", "CH-ENDO")
    assert {k for k, _ in kinds_seen} == {
        "chronic-follow-up",
        "child-health-check",
        "elderly-health-check",
        "acute-visit",
        "specialist-outpatient",
    }
