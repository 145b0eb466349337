"""The clinical record of one resident: conditions, allergies, encounters, vitals, labs, drugs.

Rates, with their sources (modelling assumptions are marked as such):

* Hypertension care cascade — China Hypertension Survey 2012–2015 (Wang Z, Chen Z,
  Zhang L et al. Circulation 2018;137:2344–2356): of adults with hypertension 46.9 % were
  aware, 40.7 % treated and 15.3 % controlled (< 140/90 mmHg). Every hypertensive resident
  of the demo is registered (has a Condition: the basic public health service programme
  screens and manages them), so they count as aware: treated = 40.7 / 46.9 = 86.8 % of
  them, controlled = 15.3 / 40.7 = 37.6 % of the treated. The untreated are uncontrolled.
* Diabetes care cascade — 2013 China Chronic Disease and Risk Factors Surveillance (Wang L,
  Gao P, Zhang M et al. JAMA 2017;317:2515–2523): 36.5 % aware, 32.2 % treated, 49.2 % of
  the treated controlled (HbA1c < 7.0 %). Treated = 32.2 / 36.5 = 88.2 % of the registered.
* Drug allergy labels — 5.61 % of 7.3 million people in Hong Kong's public health system
  2016–2021 (Chiang V, Kan AKC, Saha C, Au EYL, Li PH. BMC Med 2024;22:30): culprits
  anti-infectives 44.5 %, NSAIDs 19.3 %, nervous-system drugs 8.3 %; β-lactam labels are
  2.0 % of the population (Li PH et al. JAMA Netw Open 2020;3:e204199), so 35.7 % of the
  labels. The 27.9 % "other" labels are spread over the four named classes in proportion
  (assumption). Only 13.8 % of the β-lactam labels tested were confirmed (same JAMA Netw
  Open study): drug labels are recorded ``unconfirmed``.
* Food allergy of infants — challenge-proven 7.7 % of 0–2-year-olds in Chongqing in 2009
  (Hu Y, Chen J, Li H. Pediatr Int 2010;52:820–824), egg and cow's milk the main allergens:
  applied to children under 3, egg and milk equally often (assumption).
* Where care happens — 国家基本公共卫生服务规范（第三版）(National Basic Public Health
  Service Standards, 3rd ed., 2017): chronic-disease follow-ups by village doctors and
  township health centres (the standard asks four a year; the demo records one a year to
  keep the volume modest), the annual health check of residents aged 65+ and the health
  checks of children aged 0–6 at the township health centre. Other residents have one
  minor acute visit (acute upper respiratory infection, the commonest reason for a primary
  care visit) at their village clinic (assumption). Uncontrolled patients are seen once
  by the county hospital's cardiology or endocrinology clinic with probability 0.3
  (assumption).
* Drug choice — the first-line classes of the 2018 Chinese Guidelines for the Management
  of Hypertension (CCB, ARB, ACE inhibitor, thiazide, β-blocker) and metformin first for
  type 2 diabetes (Chinese Diabetes Society guideline 2020); the shares between drugs and
  the 40 % on a second drug are assumptions (calcium-channel blockers most used in China).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from smartmed.demo.codes import (
    ALLERGY_CLINICAL,
    ALLERGY_VER,
    CONDITION_CATEGORY,
    CONDITION_CLINICAL,
    CONDITION_VER,
    ENCOUNTER_TYPE_SYSTEM,
    HISTORY_DAYS,
    ICD10,
    LOINC,
    MEDREQ_CATEGORY,
    OBSERVATION_CATEGORY,
    RXNORM,
    SNOMED,
    UCUM,
    V3_ACT,
    Resource,
    clip,
    coding,
    concept,
    entry,
    org_ref,
    quantity,
    staff_ref,
    timestamp,
)
from smartmed.demo.population import ADULT_AGE, Person, age_on, anniversary

if TYPE_CHECKING:
    from smartmed.demo.generator import Staff, Village, _Generator

HT_TREATED_SHARE = 0.407 / 0.469  # of registered hypertensives (Wang Z 2018, see above)
HT_CONTROLLED_SHARE = 0.153 / 0.407  # of the treated
DM_TREATED_SHARE = 0.322 / 0.365  # of registered diabetics (Wang L 2017)
DM_CONTROLLED_SHARE = 0.492  # of the treated
DRUG_ALLERGY_SHARE = 0.0561  # Chiang V et al. 2024
FOOD_ALLERGY_SHARE_UNDER_3 = 0.077  # Hu Y et al. 2010
SPECIALIST_VISIT_SHARE = 0.3  # of uncontrolled patients (assumption)
SECOND_DRUG_SHARE = 0.4  # of the treated (assumption)

BP_SYSTOLIC_LIMIT = 140  # mmHg: control target (< 140/90) of the cited surveys
BP_DIASTOLIC_LIMIT = 90
HBA1C_LIMIT = 7.0  # %: control target of Wang L 2017
FASTING_GLUCOSE_LIMIT = 7.0  # mmol/L: diagnostic threshold of fasting glucose

# Modelled readings (mean, sd, low, high) by status; plausible values, kept within the
# status's side of the control target so every reading agrees with it.
SYSTOLIC = {
    "normal": (110.0, 8.0, 92.0, 139.0),  # mean + 0.35 mmHg per year over 18
    "controlled": (128.0, 6.0, 110.0, 139.0),
    "treated": (148.0, 7.0, 140.0, 180.0),
    "untreated": (156.0, 10.0, 140.0, 195.0),
}
DIASTOLIC = {
    "normal": (70.0, 6.0, 58.0, 89.0),  # mean + 0.12 mmHg per year over 18
    "controlled": (80.0, 5.0, 62.0, 89.0),
    "treated": (90.0, 6.0, 72.0, 110.0),
    "untreated": (96.0, 7.0, 75.0, 120.0),
}
HBA1C = {
    "controlled": (6.4, 0.3, 5.6, 6.9),
    "treated": (8.2, 1.0, 7.0, 12.0),
    "untreated": (8.8, 1.3, 7.0, 13.5),
}
FASTING_GLUCOSE = {
    "controlled": (6.2, 0.4, 4.8, 6.9),
    "treated": (8.8, 1.5, 7.0, 16.0),
    "untreated": (9.8, 2.0, 7.0, 18.0),
}
# Adult weight: national means of the Report on Nutrition and Chronic Diseases of Chinese
# Residents 2020 (men 69.6 kg, women 59.0 kg); the spreads are assumptions.
ADULT_WEIGHT_KG = {True: (69.6, 10.0), False: (59.0, 8.5)}

ORAL = concept(SNOMED, "26643006", "Oral route", "口服")
SUBCUTANEOUS = concept(SNOMED, "34206005", "Subcutaneous route", "皮下注射")


@dataclass(frozen=True, slots=True)
class Drug:
    """A chronic-disease drug: RxNorm ingredient, Chinese product text, one dose."""

    rxnorm: str
    display: str
    text: str  # Chinese product name and strength
    dose: float
    unit: str
    ucum: str
    strength: float  # of one tablet or capsule (one pen for insulin), in ``unit``
    per_day: int
    instruction: str
    weight: float
    drug_class: str
    oral: bool = True


# Antihypertensives (weights: shares among first drugs, assumption; see the docstring).
ANTIHYPERTENSIVES: tuple[Drug, ...] = (
    Drug(
        "17767",
        "amlodipine",
        "苯磺酸氨氯地平片 5mg",
        dose=5,
        unit="mg",
        ucum="mg",
        strength=5,
        per_day=1,
        instruction="每日一次，每次5 mg，口服",
        weight=30,
        drug_class="CCB",
    ),
    Drug(
        "7417",
        "nifedipine",
        "硝苯地平控释片 30mg",
        dose=30,
        unit="mg",
        ucum="mg",
        strength=30,
        per_day=1,
        instruction="每日一次，每次30 mg，整片吞服",
        weight=15,
        drug_class="CCB",
    ),
    Drug(
        "52175",
        "losartan",
        "氯沙坦钾片 50mg",
        dose=50,
        unit="mg",
        ucum="mg",
        strength=50,
        per_day=1,
        instruction="每日一次，每次50 mg，口服",
        weight=15,
        drug_class="ARB",
    ),
    Drug(
        "69749",
        "valsartan",
        "缬沙坦胶囊 80mg",
        dose=80,
        unit="mg",
        ucum="mg",
        strength=80,
        per_day=1,
        instruction="每日一次，每次80 mg，口服",
        weight=10,
        drug_class="ARB",
    ),
    Drug(
        "3827",
        "enalapril",
        "马来酸依那普利片 10mg",
        dose=10,
        unit="mg",
        ucum="mg",
        strength=10,
        per_day=1,
        instruction="每日一次，每次10 mg，口服",
        weight=10,
        drug_class="ACEI",
    ),
    Drug(
        "5487",
        "hydrochlorothiazide",
        "氢氯噻嗪片 25mg",
        dose=12.5,
        unit="mg",
        ucum="mg",
        strength=25,
        per_day=1,
        instruction="每日一次，每次12.5 mg（半片），晨起口服",
        weight=10,
        drug_class="thiazide",
    ),
    Drug(
        "6918",
        "metoprolol",
        "琥珀酸美托洛尔缓释片 47.5mg",
        dose=47.5,
        unit="mg",
        ucum="mg",
        strength=47.5,
        per_day=1,
        instruction="每日一次，每次47.5 mg，晨起口服",
        weight=10,
        drug_class="beta-blocker",
    ),
)
METFORMIN = Drug(
    "6809",
    "metformin",
    "盐酸二甲双胍片 0.5g",
    dose=500,
    unit="mg",
    ucum="mg",
    strength=500,
    per_day=2,
    instruction="每日两次，每次500 mg，餐中或餐后口服",
    weight=1,
    drug_class="biguanide",
)
SECOND_ANTIDIABETICS: tuple[Drug, ...] = (
    Drug(
        "16681",
        "acarbose",
        "阿卡波糖片 50mg",
        dose=50,
        unit="mg",
        ucum="mg",
        strength=50,
        per_day=3,
        instruction="每日三次，每次50 mg，与第一口饭同时嚼服",
        weight=50,
        drug_class="alpha-glucosidase",
    ),
    Drug(
        "25789",
        "glimepiride",
        "格列美脲片 2mg",
        dose=2,
        unit="mg",
        ucum="mg",
        strength=2,
        per_day=1,
        instruction="每日一次，每次2 mg，早餐前口服",
        weight=30,
        drug_class="sulfonylurea",
    ),
    Drug(
        "274783",
        "insulin glargine",
        "甘精胰岛素注射液 300单位/3ml",
        dose=10,
        unit="IU",
        ucum="[iU]",
        strength=300,
        per_day=1,
        instruction="每日一次，每次10单位，睡前皮下注射",
        weight=20,
        drug_class="insulin",
        oral=False,
    ),
)

# Drug allergy culprits (RxNorm): share of the labels, see the module docstring.
DRUG_ALLERGENS: tuple[tuple[str, str, str, float], ...] = (
    ("7980", "Penicillin G", "青霉素", 2.0 / 5.61),
    ("10180", "Sulfamethoxazole", "磺胺甲噁唑（磺胺类抗菌药）", 0.445 - 2.0 / 5.61),
    ("1191", "Aspirin", "阿司匹林", 0.193),
    ("2002", "Carbamazepine", "卡马西平", 0.083),
)
FOOD_ALLERGENS: tuple[tuple[str, str, str], ...] = (
    ("102263004", "Eggs", "鸡蛋"),
    ("3718001", "Cow's milk", "牛奶"),
)
REACTIONS: tuple[tuple[str, str, str], ...] = (
    ("247472004", "Hives", "荨麻疹"),
    ("271807003", "Eruption of skin", "皮疹"),
)

HYPERTENSION = ("I10", "Essential (primary) hypertension", "原发性高血压")
DIABETES = ("E11.9", "Type 2 diabetes mellitus without complications", "2型糖尿病")
ACUTE_URI = ("J06.9", "Acute upper respiratory infection, unspecified", "急性上呼吸道感染")


def _gauss(rng: random.Random, spec: tuple[float, float, float, float], shift: float = 0) -> float:
    mean, sd, low, high = spec
    return clip(rng.gauss(mean + shift, sd), low, high)


class Clinical:
    """Builds the clinical entries of one resident (inside the household Bundle)."""

    def __init__(
        self, gen: _Generator, person: Person, patient_url: str, village: Village, gp: Staff
    ) -> None:
        self.gen = gen
        self.rng = gen.clin_rng
        self.person = person
        self.patient_url = patient_url
        self.village = village
        self.gp = gp
        self.performer = gp
        self.out: list[Resource] = []
        self._acute = False  # the current routine visit is a minor acute one

    # -- plan ---------------------------------------------------------------------

    def entries(self) -> list[Resource]:
        """Condition, AllergyIntolerance, Encounter, Observation, MedicationRequest entries."""
        person, rng, as_of = self.person, self.rng, self.gen.as_of
        ht = self._condition(*HYPERTENSION) if person.hypertension else None
        dm = self._condition(*DIABETES) if person.diabetes else None
        conditions = [c for c in (ht, dm) if c is not None]
        self.out += conditions
        # Status per patient, so that every reading agrees with the prescriptions.
        ht_status = dm_status = ""
        ht_drugs: list[Drug] = []
        dm_drugs: list[Drug] = []
        if ht is not None:
            if rng.random() < HT_TREATED_SHARE:
                ht_status = "controlled" if rng.random() < HT_CONTROLLED_SHARE else "treated"
                ht_drugs = self._choose(ANTIHYPERTENSIVES)
            else:
                ht_status = "untreated"
        if dm is not None:
            if rng.random() < DM_TREATED_SHARE:
                dm_status = "controlled" if rng.random() < DM_CONTROLLED_SHARE else "treated"
                dm_drugs = [METFORMIN]
                if rng.random() < SECOND_DRUG_SHARE:
                    dm_drugs.append(self._weighted(SECOND_ANTIDIABETICS))
            else:
                dm_status = "untreated"
        self._allergies()

        # Visits in the two years before as_of, never before birth nor the diagnosis; a
        # chronic patient or an elder has one per year.
        onsets = [date.fromisoformat(c["resource"]["onsetDateTime"]) for c in conditions]
        since = max([person.birth, *onsets])
        span = min(HISTORY_DAYS, (as_of - since).days)
        if not (conditions or person.age >= 65):
            offsets = [rng.randint(0, span)]
        elif span > 365:
            offsets = [rng.randint(366, span), rng.randint(1, 365)]
        else:
            offsets = sorted({rng.randint(0, span), rng.randint(0, span)}, reverse=True)
        adult = person.age >= ADULT_AGE
        on_beta_blocker = any(d.drug_class == "beta-blocker" for d in ht_drugs)
        weighed = False
        for visit, offset in enumerate(offsets):
            day = as_of - timedelta(days=offset)
            age = age_on(person.birth, day)
            last = visit == len(offsets) - 1
            url, minutes = self._routine_encounter(day, conditions, age)
            if not adult:
                self._observe(url, day, minutes, *self._heart_rate(age))
                self._observe(url, day, minutes, *self._child_weight(age))
                if self._acute:
                    self._observe(url, day, minutes, *self._temperature())
                continue
            self._blood_pressure(url, day, minutes, ht_status or "normal")
            self._observe(url, day, minutes, *self._heart_rate(age, on_beta_blocker))
            if not weighed:
                self._observe(url, day, minutes, *self._adult_weight())
                weighed = True
            if dm_status:
                self._lab(url, day, minutes, "fasting-glucose", dm_status)
                if visit == 0:
                    self._lab(url, day, minutes, "hba1c", dm_status)
            if self._acute:
                self._observe(url, day, minutes, *self._temperature())
            for drugs, condition in ((ht_drugs, ht), (dm_drugs, dm)):
                for drug in drugs:
                    assert condition is not None
                    self._prescribe(drug, url, day, minutes, condition["fullUrl"], last)
        uncontrolled = [
            (status, condition)
            for status, condition in ((ht_status, ht), (dm_status, dm))
            if status in ("treated", "untreated")
        ]
        if uncontrolled and rng.random() < SPECIALIST_VISIT_SHARE:
            self._specialist_visit(uncontrolled, on_beta_blocker)
        return self.out

    def _choose(self, drugs: tuple[Drug, ...]) -> list[Drug]:
        first = self._weighted(drugs)
        if self.rng.random() >= SECOND_DRUG_SHARE:
            return [first]
        others = tuple(d for d in drugs if d.drug_class != first.drug_class)
        return [first, self._weighted(others)]

    def _weighted(self, drugs: tuple[Drug, ...]) -> Drug:
        return self.rng.choices(drugs, weights=[d.weight for d in drugs])[0]

    # -- resources ----------------------------------------------------------------

    def _condition(self, code: str, display: str, text: str) -> Resource:
        rng, person, as_of = self.rng, self.person, self.gen.as_of
        # Diagnosed as an adult, within the last 25 years, preferably not in the last 60 days.
        adult_since = anniversary(person.birth, ADULT_AGE)
        earliest = max(adult_since, as_of - timedelta(days=25 * 365))
        latest = as_of - timedelta(days=60)
        if latest <= earliest:
            onset = earliest
        else:
            onset = earliest + timedelta(days=rng.randint(0, (latest - earliest).days))
        condition: Resource = {
            "resourceType": "Condition",
            "clinicalStatus": concept(CONDITION_CLINICAL, "active", "Active"),
            "verificationStatus": concept(CONDITION_VER, "confirmed", "Confirmed"),
            "category": [concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": concept(ICD10, code, display, text),
            "subject": {"reference": self.patient_url},
            "onsetDateTime": onset.isoformat(),
        }
        return entry(condition, self.gen.full_url())

    def _allergies(self) -> None:
        rng, person, as_of = self.rng, self.person, self.gen.as_of
        found: list[tuple[str, str, str, str, str]] = []
        if rng.random() < DRUG_ALLERGY_SHARE:
            weights = [w for *_, w in DRUG_ALLERGENS]
            code, display, text, _ = rng.choices(DRUG_ALLERGENS, weights=weights)[0]
            found.append(("medication", RXNORM, code, display, text))
        if person.age < 3 and rng.random() < FOOD_ALLERGY_SHARE_UNDER_3:
            code, display, text = rng.choice(FOOD_ALLERGENS)
            found.append(("food", SNOMED, code, display, text))
        for category, system, code, display, text in found:
            earliest = max(person.birth, as_of - timedelta(days=HISTORY_DAYS))
            recorded = earliest + timedelta(days=rng.randint(0, (as_of - earliest).days))
            reaction = rng.choice(REACTIONS)
            allergy: Resource = {
                "resourceType": "AllergyIntolerance",
                "clinicalStatus": concept(ALLERGY_CLINICAL, "active", "Active"),
                "verificationStatus": concept(
                    ALLERGY_VER,
                    *(
                        ("confirmed", "Confirmed")
                        if category == "food"
                        else ("unconfirmed", "Unconfirmed")
                    ),
                ),
                "type": "allergy",
                "category": [category],
                "criticality": "low",
                "code": concept(system, code, display, text),
                "patient": {"reference": self.patient_url},
                "recordedDate": recorded.isoformat(),
                "recorder": staff_ref(self.gp.code, self.gp.person.name),
                "reaction": [{"manifestation": [concept(SNOMED, *reaction)]}],
            }
            self.out.append(entry(allergy, self.gen.full_url()))

    def _routine_encounter(
        self, day: date, conditions: list[Resource], age: int
    ) -> tuple[str, int]:
        """A follow-up, health check or minor acute visit at the village or township level."""
        rng, village = self.rng, self.village
        township = village.township
        reason: Resource | None = None
        self._acute = False
        if conditions:
            kind = ("chronic-follow-up", "慢性病随访")
            at_village = rng.random() < 0.7  # assumption: most follow-ups by the village doctor
        elif age < 7:
            kind, at_village = ("child-health-check", "0-6岁儿童健康检查"), False
        elif age >= 65:
            kind, at_village = ("elderly-health-check", "65岁及以上老年人健康体检"), False
        else:
            kind, at_village = ("acute-visit", "门诊就诊"), True
            reason = concept(ICD10, *ACUTE_URI)
            self._acute = True
        if at_village:
            provider = org_ref(village.code, village.clinic)
            clinician = village.doctor or self.gp
        else:
            provider = org_ref(township.code, township.centre)
            clinician = self.gp
        return self._encounter(
            day, kind, provider, clinician, [c["fullUrl"] for c in conditions], reason
        )

    def _encounter(
        self,
        day: date,
        kind: tuple[str, str],
        provider: Resource,
        clinician: Staff,
        reasons: list[str],
        reason_code: Resource | None = None,
    ) -> tuple[str, int]:
        rng = self.rng
        start = rng.randint(8 * 60, 11 * 60 + 30)  # morning clinic hours, 08:00–11:30
        encounter: Resource = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": coding(V3_ACT, "AMB", "ambulatory"),
            "type": [concept(ENCOUNTER_TYPE_SYSTEM, kind[0], kind[1], kind[1])],
            "subject": {"reference": self.patient_url},
            "participant": [{"individual": staff_ref(clinician.code, clinician.person.name)}],
            "period": {
                "start": timestamp(day, start),
                "end": timestamp(day, start + rng.randint(10, 30)),
            },
        }
        if reason_code is not None:
            encounter["reasonCode"] = [reason_code]
        if reasons:
            encounter["reasonReference"] = [{"reference": r} for r in reasons]
        encounter["serviceProvider"] = provider
        url = self.gen.full_url()
        self.out.append(entry(encounter, url))
        self.performer = clinician
        return url, start + rng.randint(2, 10)

    def _specialist_visit(
        self, uncontrolled: list[tuple[str, Resource | None]], on_beta_blocker: bool
    ) -> None:
        """One county hospital specialist clinic visit in the last year (uncontrolled)."""
        rng, as_of = self.rng, self.gen.as_of
        first_status, first = uncontrolled[0]
        assert first is not None
        cardiology = first["resource"]["code"]["coding"][0]["code"] == HYPERTENSION[0]
        dept = "CH-CARD" if cardiology else "CH-ENDO"
        specialist = rng.choice(self.gen.department_doctors[dept])
        onset = date.fromisoformat(first["resource"]["onsetDateTime"])
        latest = max(1, min(365, (as_of - onset).days))
        day = as_of - timedelta(days=rng.randint(1, latest))
        url, minutes = self._encounter(
            day,
            ("specialist-outpatient", "专科门诊"),
            org_ref(dept, self.gen.department_names[dept]),
            specialist,
            [c["fullUrl"] for _, c in uncontrolled if c is not None],
        )
        age = age_on(self.person.birth, day)
        for status, condition in uncontrolled:
            assert condition is not None
            if condition["resource"]["code"]["coding"][0]["code"] == HYPERTENSION[0]:
                self._blood_pressure(url, day, minutes, status)
                self._observe(url, day, minutes, *self._heart_rate(age, on_beta_blocker))
            else:
                self._lab(url, day, minutes, "hba1c", status)

    def _prescribe(
        self, drug: Drug, encounter_url: str, day: date, minutes: int, reason: str, last: bool
    ) -> None:
        """A 30-day prescription (two refills) written at a chronic-disease visit."""
        days = 30
        units = drug.dose * drug.per_day * days
        package = "支" if drug.ucum == "[iU]" else "片"  # pens of insulin, else tablets
        supply: Resource = {"value": max(1, round(units / drug.strength)), "unit": package}
        dosage: Resource = {
            "sequence": 1,
            "text": drug.instruction,
            "timing": {"repeat": {"frequency": drug.per_day, "period": 1, "periodUnit": "d"}},
            "route": ORAL if drug.oral else SUBCUTANEOUS,
            "doseAndRate": [{"doseQuantity": quantity(drug.dose, drug.unit, drug.ucum)}],
        }
        request: Resource = {
            "resourceType": "MedicationRequest",
            "status": "active" if last else "completed",
            "intent": "order",
            "category": [concept(MEDREQ_CATEGORY, "outpatient", "Outpatient", "门诊处方")],
            "medicationCodeableConcept": concept(RXNORM, drug.rxnorm, drug.display, drug.text),
            "subject": {"reference": self.patient_url},
            "encounter": {"reference": encounter_url},
            "authoredOn": timestamp(day, minutes),
            "requester": staff_ref(self.performer.code, self.performer.person.name),
            "reasonReference": [{"reference": reason}],
            "dosageInstruction": [dosage],
            "dispenseRequest": {
                "validityPeriod": {
                    "start": day.isoformat(),
                    "end": (day + timedelta(days=3 * days)).isoformat(),
                },
                "numberOfRepeatsAllowed": 2,
                "quantity": supply,
                "expectedSupplyDuration": {
                    "value": days,
                    "unit": "days",
                    "system": UCUM,
                    "code": "d",
                },
            },
        }
        self.out.append(entry(request, self.gen.full_url()))

    def _base(
        self,
        encounter_url: str,
        day: date,
        minutes: int,
        category: str,
        code: str,
        display: str,
        text: str,
    ) -> Resource:
        cat_display = "Vital Signs" if category == "vital-signs" else "Laboratory"
        return {
            "resourceType": "Observation",
            "status": "final",
            "category": [concept(OBSERVATION_CATEGORY, category, cat_display)],
            "code": concept(LOINC, code, display, text),
            "subject": {"reference": self.patient_url},
            "encounter": {"reference": encounter_url},
            "effectiveDateTime": timestamp(day, minutes),
            "performer": [staff_ref(self.performer.code, self.performer.person.name)],
        }

    def _observe(
        self,
        encounter_url: str,
        day: date,
        minutes: int,
        code: str,
        display: str,
        text: str,
        value: float,
        unit: str,
        ucum: str,
        category: str = "vital-signs",
    ) -> None:
        observation = self._base(encounter_url, day, minutes, category, code, display, text)
        observation["valueQuantity"] = quantity(value, unit, ucum)
        self.out.append(entry(observation, self.gen.full_url()))

    def _blood_pressure(self, encounter_url: str, day: date, minutes: int, status: str) -> None:
        rng = self.rng
        over = max(0, self.person.age - ADULT_AGE) if status == "normal" else 0
        systolic = round(_gauss(rng, SYSTOLIC[status], 0.35 * over))
        diastolic = round(_gauss(rng, DIASTOLIC[status], 0.12 * over))
        if status in ("normal", "controlled"):
            systolic = min(systolic, BP_SYSTOLIC_LIMIT - 1)
            diastolic = min(diastolic, BP_DIASTOLIC_LIMIT - 1)
        diastolic = min(diastolic, systolic - 25)
        observation = self._base(
            encounter_url,
            day,
            minutes,
            "vital-signs",
            "85354-9",
            "Blood pressure panel with all children optional",
            "血压",
        )
        observation["component"] = [
            {
                "code": concept(LOINC, "8480-6", "Systolic blood pressure", "收缩压"),
                "valueQuantity": quantity(systolic, "mmHg", "mm[Hg]"),
            },
            {
                "code": concept(LOINC, "8462-4", "Diastolic blood pressure", "舒张压"),
                "valueQuantity": quantity(diastolic, "mmHg", "mm[Hg]"),
            },
        ]
        self.out.append(entry(observation, self.gen.full_url()))

    def _lab(self, encounter_url: str, day: date, minutes: int, test: str, status: str) -> None:
        rng = self.rng
        if test == "hba1c":
            value = round(_gauss(rng, HBA1C[status]), 1)
            if status != "controlled":
                value = max(value, HBA1C_LIMIT)
            self._observe(
                encounter_url,
                day,
                minutes,
                "4548-4",
                "Hemoglobin A1c/Hemoglobin.total in Blood",
                "糖化血红蛋白",
                value,
                "%",
                "%",
                "laboratory",
            )
            return
        # LOINC 14771-0 is fasting glucose in moles/volume (mmol/L, the unit used in
        # China); 1558-6 is the mass/volume (mg/dL) code and would not fit the unit.
        value = round(_gauss(rng, FASTING_GLUCOSE[status]), 1)
        if status != "controlled":
            value = max(value, FASTING_GLUCOSE_LIMIT)
        self._observe(
            encounter_url,
            day,
            minutes,
            "14771-0",
            "Fasting glucose [Moles/volume] in Serum or Plasma",
            "空腹血糖",
            value,
            "mmol/L",
            "mmol/L",
            "laboratory",
        )

    def _heart_rate(
        self, age: int, beta_blocker: bool = False
    ) -> tuple[str, str, str, float, str, str]:
        # Normal ranges by age: Advanced Paediatric Life Support (APLS, 5th ed., 2011):
        # <1 y 110–160, 1–2 y 100–150, 2–5 y 95–140, 5–12 y 80–120, >12 y 60–100 /min.
        if age < 1:
            low, high = 110, 160
        elif age < 2:
            low, high = 100, 150
        elif age < 5:
            low, high = 95, 140
        elif age < 12:
            low, high = 80, 120
        else:
            low, high = 60, 100
        mean, spread = (low + high) / 2, (high - low) / 5
        if beta_blocker:  # β-blockade lowers the resting rate (assumption: about 12 /min)
            mean -= 12
        value = round(clip(self.rng.gauss(mean, spread), low - 8, high + 10))
        return "8867-4", "Heart rate", "心率", value, "beats/minute", "/min"

    def _temperature(self) -> tuple[str, str, str, float, str, str]:
        # A mild fever of an upper respiratory infection (assumption: 37.0–39.0 °C).
        value = round(clip(self.rng.gauss(37.8, 0.5), 37.0, 39.0), 1)
        return "8310-5", "Body temperature", "体温", value, "Cel", "Cel"

    def _child_weight(self, age: int) -> tuple[str, str, str, float, str, str]:
        # APLS (5th ed., 2011) weight estimates: 0–12 months 0.5 × months + 4; 1–5 years
        # 2 × years + 8; 6–12 years 3 × years + 7; 13–17 years: our interpolation towards
        # the adult means (Report on Nutrition and Chronic Diseases 2020: 69.6 / 59.0 kg).
        person, rng = self.person, self.rng
        if age < 1:
            estimate = 0.5 * rng.randint(0, 11) + 4
        elif age <= 5:
            estimate = 2 * age + 8
        elif age <= 12:
            estimate = 3 * age + 7
        else:
            adult = ADULT_WEIGHT_KG[person.male][0]
            estimate = 43 + (adult - 43) * (age - 12) / 6
        value = round(estimate * clip(rng.gauss(1, 0.1), 0.75, 1.3), 1)
        return "29463-7", "Body weight", "体重", value, "kg", "kg"

    def _adult_weight(self) -> tuple[str, str, str, float, str, str]:
        mean, spread = ADULT_WEIGHT_KG[self.person.male]
        value = round(clip(self.rng.gauss(mean, spread), 38, 130), 1)
        return "29463-7", "Body weight", "体重", value, "kg", "kg"
