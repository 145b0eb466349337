"""A deterministic synthetic county as FHIR R4 transaction Bundles (pure: no I/O).

``generate_county(residents=…, seed=…)`` yields, first, one Bundle with the county's
organisations and staff, then one Bundle per household. The same seed (and ``as_of``)
gives byte-identical Bundles: every random choice, uuids included, comes from
``random.Random`` streams derived from the seed, and the reference date is fixed.

References: within a Bundle by ``urn:uuid:`` full URLs; across Bundles by conditional
reference on an identifier (``Organization?identifier=urn:smartmed:org|VC0101``), which
the transaction engine resolves. The organisation Bundle's entries carry ``ifNoneExist``
on the same identifiers, so loading a second county into the same database reuses the
organisations and staff already there instead of duplicating them.

Identifier and code systems minted for the demo (all ``urn:smartmed:`` URIs):

* ``urn:smartmed:org`` — organisations: ``CH`` county hospital, ``CH-IM`` … its
  departments, ``TCM`` county TCM hospital, ``TC01`` … township health centres,
  ``VC0101`` … village clinics (township 01, village 01);
* ``urn:smartmed:practitioner`` (``P0001`` …), ``urn:smartmed:practitioner-role``,
  ``urn:smartmed:care-team`` — staff, their roles and the family-doctor teams;
* ``urn:smartmed:id:resident`` — the 18-character resident identity number of
  GB 11643-1999 (居民身份证号码); a local URI rather than an official OID, so that the
  demo does not claim a national namespace;
* ``urn:smartmed:org-type``, ``urn:smartmed:qualification``,
  ``urn:smartmed:encounter-type``, ``urn:smartmed:specialty`` — Chinese organisation
  kinds, practising certificates, visit kinds and the TCM specialty, which have no
  code in the international code systems.

Clinical content (see ``population`` for the sources of the population statistics):
adults get hypertension (ICD-10 I10) and type 2 diabetes (E11.9) Conditions at the
published prevalence; everyone gets one or two ambulatory Encounters in the two years
before ``as_of`` with 2–7 vital-sign / laboratory Observations in total.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from smartmed.demo import idcard, names
from smartmed.demo.population import (
    ADULT_AGE,
    Household,
    Person,
    age_on,
    anniversary,
    assign_conditions,
    birth_date,
    draw_people,
    form_households,
    name_household,
)

Resource = dict[str, Any]

# The reference date: "today" for the synthetic county. Fixed (not the clock) so that
# the same seed gives the same Bundles on any day.
DEFAULT_AS_OF = date(2026, 11, 1)
HISTORY_DAYS = 730  # encounters and observations fall in the two years before as_of

ORG_SYSTEM = "urn:smartmed:org"
PRACTITIONER_SYSTEM = "urn:smartmed:practitioner"
ROLE_SYSTEM = "urn:smartmed:practitioner-role"
CARE_TEAM_SYSTEM = "urn:smartmed:care-team"
RESIDENT_ID_SYSTEM = "urn:smartmed:id:resident"
ORG_TYPE_SYSTEM = "urn:smartmed:org-type"
QUALIFICATION_SYSTEM = "urn:smartmed:qualification"
ENCOUNTER_TYPE_SYSTEM = "urn:smartmed:encounter-type"
SPECIALTY_SYSTEM = "urn:smartmed:specialty"

HL7_ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
HL7_PRACTITIONER_ROLE = "http://terminology.hl7.org/CodeSystem/practitioner-role"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0131 = "http://terminology.hl7.org/CodeSystem/v2-0131"
V3_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

# Hospital departments: identifier suffix, Chinese name, SNOMED CT specialty.
DEPARTMENTS: tuple[tuple[str, str, str, str], ...] = (
    ("IM", "内科", "419192003", "Internal medicine"),
    ("CARD", "心血管内科", "394579002", "Cardiology"),
    ("ENDO", "内分泌科", "394583002", "Endocrinology"),
    ("PAED", "儿科", "394537008", "Pediatric specialty"),
    ("OBS", "产科", "408470005", "Obstetrics"),
    ("SURG", "外科", "394609007", "Surgery-general"),
    ("ED", "急诊科", "773568002", "Emergency medicine"),
)
GENERAL_PRACTICE = (SNOMED, "394814009", "General practice")
PUBLIC_HEALTH = (SNOMED, "408440000", "Public health medicine")
TCM_SPECIALTY = (SPECIALTY_SYSTEM, "tcm", "中医")

QUALIFICATIONS = {
    "physician": "执业医师",
    "tcm-physician": "中医执业医师",
    "rural-doctor": "乡村医生",
    "nurse": "注册护士",
}

# Relationship of a household member to the head: (role, is male) -> v3 RoleCode, Chinese.
RELATIONSHIPS: dict[tuple[str, bool], tuple[str, str, str]] = {
    ("spouse", True): ("HUSB", "husband", "丈夫"),
    ("spouse", False): ("WIFE", "wife", "妻子"),
    ("child", True): ("SON", "natural son", "儿子"),
    ("child", False): ("DAU", "natural daughter", "女儿"),
    ("grandchild", True): ("GRNDSON", "grandson", "孙子"),
    ("grandchild", False): ("GRNDDAU", "granddaughter", "孙女"),
    ("parent", True): ("FTH", "father", "父亲"),
    ("parent", False): ("MTH", "mother", "母亲"),
    ("relative", True): ("FAMMEMB", "family member", "亲属"),
    ("relative", False): ("FAMMEMB", "family member", "亲属"),
}
MARITAL = {
    "M": ("Married", "已婚"),
    "S": ("Never Married", "未婚"),
    "W": ("Widowed", "丧偶"),
    "D": ("Divorced", "离婚"),
}

# Mobile prefixes of the three operators (13x, 15x, 18x ranges in use).
_MOBILE_PREFIXES = (
    "130 131 132 133 134 135 136 137 138 139 150 151 152 153 155 156 157 158 159 "
    "180 181 182 183 184 185 186 187 188 189"
).split()
OWN_PHONE_AGE = 16  # younger residents are reached through a guardian (Patient.contact)

# Modelling assumptions for the vital signs (plausible ranges, not statistics):
# half of the treated patients are controlled at a given visit; weight means are the
# national adult means of the Report on Nutrition and Chronic Diseases of Chinese
# Residents 2020 (men 69.6 kg, women 59.0 kg), the spreads are ours.
CONTROLLED_SHARE = 0.5
ADULT_WEIGHT_KG = {True: (69.6, 10.0), False: (59.0, 8.5)}


@dataclass(frozen=True, slots=True)
class County:
    """Where the synthetic county lies: GB/T 2260 region code and postal address."""

    region_code: str = "330521"
    province: str = "浙江省"
    city: str = "湖州市"
    name: str = "德清县"
    postal_code: str = "313200"
    area_code: str = "0572"


COUNTY = County()


@dataclass(slots=True)
class Staff:
    """A practitioner and the organisation they work for."""

    code: str
    person: Person
    role: str  # doctor | nurse
    qualification: str
    specialty: tuple[str, str, str]
    org: str
    phone: str
    full_url: str = ""
    role_url: str = ""


@dataclass(slots=True)
class Village:
    """A village and its clinic."""

    code: str
    name: str
    clinic: str
    township: Township
    doctor: Staff | None = None
    houses: int = 0


@dataclass(slots=True)
class Township:
    """A township (镇) with its health centre and family-doctor team."""

    code: str
    name: str
    centre: str
    team: list[Staff] = field(default_factory=list)
    villages: list[Village] = field(default_factory=list)

    @property
    def doctors(self) -> list[Staff]:
        """The team's general practitioners (candidates for Patient.generalPractitioner)."""
        return [s for s in self.team if s.specialty == GENERAL_PRACTICE and s.role == "doctor"]


def org_ref(code: str, display: str | None = None) -> Resource:
    """A conditional reference to the organisation with that identifier."""
    ref: Resource = {"reference": f"Organization?identifier={ORG_SYSTEM}|{code}"}
    if display:
        ref["display"] = display
    return ref


def practitioner_ref(staff: Staff) -> Resource:
    """A conditional reference to a practitioner by identifier."""
    return {
        "reference": f"Practitioner?identifier={PRACTITIONER_SYSTEM}|{staff.code}",
        "display": staff.person.name,
    }


def _coding(system: str, code: str, display: str) -> Resource:
    return {"system": system, "code": code, "display": display}


def _concept(system: str, code: str, display: str, text: str | None = None) -> Resource:
    concept: Resource = {"coding": [_coding(system, code, display)]}
    if text:
        concept["text"] = text
    return concept


def _timestamp(day: date, minutes: int) -> str:
    """A local (UTC+8) dateTime ``minutes`` after midnight of ``day``."""
    return f"{day.isoformat()}T{minutes // 60:02d}:{minutes % 60:02d}:00+08:00"


def _bundle(entries: list[Resource]) -> Resource:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class _Generator:
    """Holds the random streams and the county being built."""

    def __init__(self, seed: int, as_of: date, county: County) -> None:
        master = random.Random(seed)
        # Independent streams: the population does not shift when clinical details change.
        self.org_rng = random.Random(master.getrandbits(64))
        self.pop_rng = random.Random(master.getrandbits(64))
        self.clin_rng = random.Random(master.getrandbits(64))
        self._uuid_rng = random.Random(master.getrandbits(64))
        self.as_of = as_of
        self.county = county
        self.townships: list[Township] = []
        self._staff_count = 0
        self._id_numbers: set[str] = set()
        self._phones: set[str] = set()

    # -- helpers ------------------------------------------------------------------

    def full_url(self) -> str:
        return f"urn:uuid:{uuid.UUID(int=self._uuid_rng.getrandbits(128), version=4)}"

    def phone(self, rng: random.Random) -> str:
        while True:
            number = rng.choice(_MOBILE_PREFIXES) + f"{rng.randrange(10**8):08d}"
            if number not in self._phones:
                self._phones.add(number)
                return number

    def landline(self, rng: random.Random) -> str:
        return f"{self.county.area_code}-8{rng.randrange(10**7):07d}"

    def id_number(self, rng: random.Random, person: Person) -> str:
        while True:
            sequence = rng.randrange(1, 500) * 2 - (1 if person.male else 0)  # odd = male
            number = idcard.make_id_number(self.county.region_code, person.birth, sequence)
            if number not in self._id_numbers:
                self._id_numbers.add(number)
                return number

    def address(self, lines: list[str], use: str | None = None) -> Resource:
        c = self.county
        address: Resource = {}
        if use:
            address["use"] = use
        address |= {
            "type": "physical",
            "text": c.province + c.city + c.name + "".join(lines),
            "line": lines,
            "city": c.city,
            "district": c.name,
            "state": c.province,
            "postalCode": c.postal_code,
            "country": "CN",
        }
        return address

    @staticmethod
    def entry(resource: Resource, full_url: str, if_none_exist: str | None = None) -> Resource:
        request: Resource = {"method": "POST", "url": resource["resourceType"]}
        if if_none_exist:
            request["ifNoneExist"] = if_none_exist
        return {"fullUrl": full_url, "resource": resource, "request": request}

    @staticmethod
    def human_name(person: Person) -> list[Resource]:
        return [
            {
                "use": "official",
                "text": person.name,
                "family": person.family,
                "given": [person.given],
            }
        ]

    # -- organisations and staff --------------------------------------------------

    def _staff(
        self, org: str, role: str, qualification: str, specialty: tuple[str, str, str]
    ) -> Staff:
        rng = self.org_rng
        self._staff_count += 1
        person = Person(age=rng.randint(26, 58), male=rng.random() < 0.5)
        person.birth = birth_date(rng, person.age, self.as_of)
        person.family = names.family_name(rng)
        person.given = names.given_name(rng, male=person.male, birth_year=person.birth.year)
        return Staff(
            f"P{self._staff_count:04d}",
            person,
            role,
            qualification,
            specialty,
            org,
            self.phone(rng),
        )

    def _organization(
        self,
        code: str,
        name: str,
        kind: tuple[str, str],
        local: tuple[str, str],
        lines: list[str],
        part_of: str | None,
    ) -> tuple[str, Resource]:
        full_url = self.full_url()
        resource: Resource = {
            "resourceType": "Organization",
            "identifier": [{"use": "official", "system": ORG_SYSTEM, "value": code}],
            "active": True,
            "type": [
                _concept(HL7_ORG_TYPE, kind[0], kind[1]),
                _concept(ORG_TYPE_SYSTEM, local[0], local[1], local[1]),
            ],
            "name": name,
            "telecom": [{"system": "phone", "value": self.landline(self.org_rng), "use": "work"}],
            "address": [self.address(lines, "work")],
        }
        if part_of:
            resource["partOf"] = {"reference": part_of}
        return full_url, resource

    def organisations(self, residents: int) -> Resource:
        """The first Bundle: organisations, practitioners, roles and family-doctor teams."""
        rng = self.org_rng
        county = self.county.name
        entries: list[Resource] = []
        org_urls: dict[str, str] = {}
        staff: list[Staff] = []

        def add_org(
            code: str,
            name: str,
            kind: tuple[str, str],
            local: tuple[str, str],
            lines: list[str],
            part_of: str | None,
        ) -> None:
            url, resource = self._organization(
                code, name, kind, local, lines, org_urls[part_of] if part_of else None
            )
            org_urls[code] = url
            entries.append(self.entry(resource, url, f"identifier={ORG_SYSTEM}|{code}"))

        provider = ("prov", "Healthcare Provider")
        department = ("dept", "Hospital Department")
        hospital = f"{county}人民医院"
        add_org(
            "CH", hospital, provider, ("county-hospital", "县级综合医院"), ["城关健康路1号"], None
        )
        for suffix, dept, code, display in DEPARTMENTS:
            add_org(
                f"CH-{suffix}",
                hospital + dept,
                department,
                ("department", "临床科室"),
                ["城关健康路1号"],
                "CH",
            )
            specialty = (SNOMED, code, display)
            staff += [
                self._staff(f"CH-{suffix}", "doctor", "physician", specialty) for _ in range(2)
            ]
            staff.append(self._staff(f"CH-{suffix}", "nurse", "nurse", specialty))
        add_org(
            "TCM",
            f"{county}中医院",
            provider,
            ("tcm-hospital", "县级中医医院"),
            ["城关杏林路8号"],
            None,
        )
        staff += [self._staff("TCM", "doctor", "tcm-physician", TCM_SPECIALTY) for _ in range(3)]
        staff.append(self._staff("TCM", "nurse", "nurse", TCM_SPECIALTY))

        # About one township health centre per 8–12 thousand residents (at least two) and
        # one village clinic per 800–1,500 residents (at least one per township): a
        # modelling choice in the range of Chinese rural counties.
        n_townships = max(2, round(residents / rng.uniform(8000, 12000)))
        n_villages = max(n_townships, round(residents / rng.uniform(800, 1500)))
        taken: set[str] = set()
        town_names = names.place_names(rng, n_townships, "镇", taken)
        per_township = [1] * n_townships
        for _ in range(n_villages - n_townships):
            per_township[rng.randrange(n_townships)] += 1
        width = max(2, len(str(n_townships)))
        for t, (town, count) in enumerate(zip(town_names, per_township, strict=True), start=1):
            code = f"TC{t:0{width}d}"
            township = Township(code, town, f"{county}{town}卫生院")
            self.townships.append(township)
            add_org(
                code,
                township.centre,
                provider,
                ("township-health-centre", "乡镇卫生院"),
                [town, "卫生院路1号"],
                "CH",
            )
            team = [
                self._staff(code, "doctor", "physician", GENERAL_PRACTICE),
                self._staff(code, "nurse", "nurse", GENERAL_PRACTICE),
                self._staff(code, "doctor", "physician", PUBLIC_HEALTH),
            ]
            if rng.random() < 0.5:
                team.append(self._staff(code, "doctor", "physician", GENERAL_PRACTICE))
            township.team = team
            staff += team
            vwidth = max(2, len(str(count)))
            for v, village in enumerate(names.place_names(rng, count, "村", taken), start=1):
                vcode = f"VC{t:0{width}d}{v:0{vwidth}d}"
                clinic = f"{town}{village}卫生室"
                add_org(
                    vcode,
                    clinic,
                    provider,
                    ("village-clinic", "村卫生室"),
                    [town, f"{village}1号"],
                    code,
                )
                doctor = self._staff(vcode, "doctor", "rural-doctor", GENERAL_PRACTICE)
                staff.append(doctor)
                township.villages.append(Village(vcode, village, clinic, township, doctor))

        for member in staff:
            entries += self._staff_entries(member, org_urls[member.org])
        for township in self.townships:
            entries.append(self._care_team(township, org_urls[township.code]))
        return _bundle(entries)

    def _staff_entries(self, staff: Staff, org_url: str) -> list[Resource]:
        person = staff.person
        staff.full_url = self.full_url()
        staff.role_url = self.full_url()
        qualification = QUALIFICATIONS[staff.qualification]
        practitioner: Resource = {
            "resourceType": "Practitioner",
            "identifier": [{"use": "official", "system": PRACTITIONER_SYSTEM, "value": staff.code}],
            "active": True,
            "name": self.human_name(person),
            "telecom": [{"system": "phone", "value": staff.phone, "use": "work"}],
            "gender": "male" if person.male else "female",
            "birthDate": person.birth.isoformat(),
            "qualification": [
                {
                    "code": _concept(
                        QUALIFICATION_SYSTEM, staff.qualification, qualification, qualification
                    )
                }
            ],
        }
        role_code = f"{staff.code}-{staff.org}"
        role: Resource = {
            "resourceType": "PractitionerRole",
            "identifier": [{"system": ROLE_SYSTEM, "value": role_code}],
            "active": True,
            "practitioner": {"reference": staff.full_url, "display": person.name},
            "organization": {"reference": org_url},
            "code": [
                _concept(
                    HL7_PRACTITIONER_ROLE,
                    staff.role,
                    staff.role.capitalize(),
                    "医生" if staff.role == "doctor" else "护士",
                )
            ],
            "specialty": [_concept(*staff.specialty)],
        }
        return [
            self.entry(
                practitioner, staff.full_url, f"identifier={PRACTITIONER_SYSTEM}|{staff.code}"
            ),
            self.entry(role, staff.role_url, f"identifier={ROLE_SYSTEM}|{role_code}"),
        ]

    def _care_team(self, township: Township, org_url: str) -> Resource:
        code = f"{township.code}-FDT"
        participants = [
            {
                "role": [{"text": "团队长" if i == 0 else "团队成员"}],
                "member": {"reference": s.role_url, "display": s.person.name},
            }
            for i, s in enumerate(township.team)
        ]
        team: Resource = {
            "resourceType": "CareTeam",
            "identifier": [{"system": CARE_TEAM_SYSTEM, "value": code}],
            "status": "active",
            "category": [
                _concept(LOINC, "LA28865-6", "Longitudinal care-coordination focused care team")
            ],
            "name": f"{township.name}家庭医生签约服务团队",
            "participant": participants,
            "managingOrganization": [{"reference": org_url}],
        }
        return self.entry(team, self.full_url(), f"identifier={CARE_TEAM_SYSTEM}|{code}")

    # -- residents ----------------------------------------------------------------

    def plan_households(self, residents: int) -> list[tuple[Household, Village]]:
        """The residents, grouped in households, each placed in a village."""
        rng = self.pop_rng
        people = draw_people(rng, residents)
        households = form_households(rng, people)
        assign_conditions(rng, people)
        villages = [v for t in self.townships for v in t.villages]
        weights = [rng.uniform(0.6, 1.4) for _ in villages]  # villages differ in size
        plan = []
        for household in households:
            for person in household.members:
                person.birth = birth_date(rng, person.age, self.as_of)
            name_household(rng, household)
            plan.append((household, rng.choices(villages, weights=weights)[0]))
        return plan

    def household_bundle(self, household: Household, village: Village) -> Resource:
        """One household: Patients, RelatedPersons, Conditions, Encounters, Observations."""
        rng = self.pop_rng
        township = village.township
        village.houses += 1
        lines = [township.name, f"{village.name}{village.houses}号"]
        gp = rng.choice(township.doctors)
        members = household.members
        urls = [self.full_url() for _ in members]
        phones = [self.phone(rng) if p.age >= OWN_PHONE_AGE else None for p in members]
        guardian = next((i for i, p in enumerate(members) if p.age >= ADULT_AGE), None)
        patients: list[Resource] = []
        related: list[Resource] = []
        for i, person in enumerate(members):
            patient: Resource = {
                "resourceType": "Patient",
                "identifier": [
                    {
                        "use": "official",
                        "type": _concept(
                            V2_0203, "NI", "National unique individual identifier", "居民身份证号码"
                        ),
                        "system": RESIDENT_ID_SYSTEM,
                        "value": self.id_number(rng, person),
                    }
                ],
                "active": True,
                "name": self.human_name(person),
            }
            if phones[i]:
                patient["telecom"] = [{"system": "phone", "value": phones[i], "use": "mobile"}]
            patient |= {
                "gender": "male" if person.male else "female",
                "birthDate": person.birth.isoformat(),
                "address": [self.address(list(lines), "home")],
            }
            if person.age >= ADULT_AGE:
                code = self._marital(rng, person, household)
                patient["maritalStatus"] = _concept(V3_MARITAL, code, *MARITAL[code])
            if phones[i] is None and guardian is not None and guardian != i:
                adult = members[guardian]
                patient["contact"] = [
                    {
                        "relationship": [_concept(V2_0131, "N", "Next-of-Kin", "监护人")],
                        "name": self.human_name(adult)[0],
                        "telecom": [
                            {"system": "phone", "value": phones[guardian], "use": "mobile"}
                        ],
                    }
                ]
            patient["generalPractitioner"] = [practitioner_ref(gp)]
            patient["managingOrganization"] = org_ref(village.code, village.clinic)
            if i > 0:
                related_url = self.full_url()
                patient["link"] = [{"other": {"reference": related_url}, "type": "seealso"}]
                code, display, text = RELATIONSHIPS[(person.role, person.male)]
                relation: Resource = {
                    "resourceType": "RelatedPerson",
                    "active": True,
                    "patient": {"reference": urls[0], "display": members[0].name},
                    "relationship": [_concept(V3_ROLE, code, display, text)],
                    "name": self.human_name(person),
                }
                if phones[i]:
                    relation["telecom"] = [{"system": "phone", "value": phones[i], "use": "mobile"}]
                relation |= {
                    "gender": patient["gender"],
                    "birthDate": patient["birthDate"],
                    "address": [self.address(list(lines), "home")],
                }
                related.append(self.entry(relation, related_url))
            patients.append(self.entry(patient, urls[i]))
        clinical: list[Resource] = []
        for person, url in zip(members, urls, strict=True):
            clinical += _Clinical(self, person, url, village, gp).entries()
        return _bundle(patients + related + clinical)

    @staticmethod
    def _marital(rng: random.Random, person: Person, household: Household) -> str:
        roles = [p.role for p in household.members]
        if person.role == "spouse" or (person.role == "head" and "spouse" in roles):
            return "M"
        if person.role == "parent":
            return "M" if roles.count("parent") == 2 else "W"
        if person.role == "head":
            if person.age >= 60:
                return "W" if rng.random() < 0.8 else "D"
            if "child" in roles:  # spouse working away, divorced or widowed
                return rng.choices("MDW", weights=(5, 3, 2))[0]
        if person.age < 30:
            return "S"
        return "S" if rng.random() < 0.5 else "D"


class _Clinical:
    """Conditions, Encounters and Observations of one resident."""

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

    def entries(self) -> list[Resource]:
        person, rng, as_of = self.person, self.rng, self.gen.as_of
        conditions = []
        if person.hypertension:
            conditions.append(
                self._condition("I10", "Essential (primary) hypertension", "原发性高血压")
            )
        if person.diabetes:
            conditions.append(
                self._condition(
                    "E11.9", "Type 2 diabetes mellitus without complications", "2型糖尿病"
                )
            )
        # Visit dates: the two years before as_of, never before birth nor before the
        # diagnosis; two visits fall in different years when there is room (annual health
        # check of the over-65s, or chronic-disease follow-ups).
        since = max(
            [person.birth]
            + [date.fromisoformat(c["resource"]["onsetDateTime"]) for c in conditions]
        )
        span = min(HISTORY_DAYS, (as_of - since).days)
        chronic = bool(conditions)
        if not (chronic or person.age >= 65):
            offsets = [rng.randint(0, span)]
        elif span > 365:
            offsets = [rng.randint(366, span), rng.randint(1, 365)]
        else:
            offsets = sorted({rng.randint(0, span), rng.randint(0, span)}, reverse=True)
        bp_controlled = rng.random() < CONTROLLED_SHARE
        glucose_controlled = rng.random() < CONTROLLED_SHARE
        adult = person.age >= ADULT_AGE
        for visit, offset in enumerate(offsets):
            day = as_of - timedelta(days=offset)
            age = age_on(person.birth, day)
            encounter_url, start = self._encounter(day, conditions, age)
            minutes = start + rng.randint(2, 10)
            if not adult:
                self._observe(encounter_url, day, minutes, *self._heart_rate(age))
                self._observe(encounter_url, day, minutes, *self._child_weight(age))
                continue
            self._blood_pressure(encounter_url, day, minutes, bp_controlled)
            self._observe(encounter_url, day, minutes, *self._heart_rate(age))
            if visit == 0:
                self._observe(
                    encounter_url,
                    day,
                    minutes,
                    "29463-7",
                    "Body weight",
                    "体重",
                    self._adult_weight(),
                    "kg",
                    "kg",
                )
            if person.diabetes:
                self._glucose(encounter_url, day, minutes, glucose_controlled)
        return conditions + self.out

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
            "clinicalStatus": _concept(CONDITION_CLINICAL, "active", "Active"),
            "verificationStatus": _concept(CONDITION_VER, "confirmed", "Confirmed"),
            "category": [_concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": _concept(ICD10, code, display, text),
            "subject": {"reference": self.patient_url},
            "onsetDateTime": onset.isoformat(),
        }
        return self.gen.entry(condition, self.gen.full_url())

    def _encounter(self, day: date, conditions: list[Resource], age: int) -> tuple[str, int]:
        rng = self.rng
        chronic = bool(conditions)
        if chronic:
            kind = ("chronic-follow-up", "慢性病随访")
        elif age < 7:
            kind = ("child-health-check", "0-6岁儿童健康检查")
        else:
            kind = ("health-check", "健康体检")
        at_village = chronic and rng.random() < 0.7
        township = self.village.township
        provider = (
            org_ref(self.village.code, self.village.clinic)
            if at_village
            else org_ref(township.code, township.centre)
        )
        clinician = self.village.doctor if at_village and self.village.doctor else self.gp
        start = rng.randint(8 * 60, 11 * 60 + 30)  # morning clinic hours, 08:00–11:30
        encounter: Resource = {
            "resourceType": "Encounter",
            "status": "finished",
            "class": _coding(V3_ACT, "AMB", "ambulatory"),
            "type": [_concept(ENCOUNTER_TYPE_SYSTEM, kind[0], kind[1], kind[1])],
            "subject": {"reference": self.patient_url},
            "participant": [{"individual": practitioner_ref(clinician)}],
            "period": {
                "start": _timestamp(day, start),
                "end": _timestamp(day, start + rng.randint(10, 30)),
            },
        }
        if conditions:
            encounter["reasonReference"] = [{"reference": c["fullUrl"]} for c in conditions]
        encounter["serviceProvider"] = provider
        url = self.gen.full_url()
        self.out.append(self.gen.entry(encounter, url))
        self.performer = clinician
        return url, start

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
            "category": [_concept(OBSERVATION_CATEGORY, category, cat_display)],
            "code": _concept(LOINC, code, display, text),
            "subject": {"reference": self.patient_url},
            "encounter": {"reference": encounter_url},
            "effectiveDateTime": _timestamp(day, minutes),
            "performer": [practitioner_ref(self.performer)],
        }

    @staticmethod
    def _quantity(value: float, unit: str, ucum: str) -> Resource:
        return {"value": value, "unit": unit, "system": UCUM, "code": ucum}

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
        observation["valueQuantity"] = self._quantity(value, unit, ucum)
        self.out.append(self.gen.entry(observation, self.gen.full_url()))

    def _blood_pressure(
        self, encounter_url: str, day: date, minutes: int, controlled: bool
    ) -> None:
        rng, person = self.rng, self.person
        if person.hypertension and controlled:
            systolic, diastolic = rng.gauss(132, 5), rng.gauss(82, 5)
            systolic, diastolic = _clip(systolic, 118, 139), _clip(diastolic, 68, 89)
        elif person.hypertension:
            systolic, diastolic = (
                _clip(rng.gauss(152, 9), 140, 185),
                _clip(rng.gauss(93, 7), 78, 115),
            )
        else:  # rises gently with age, kept below the 140/90 threshold
            over = person.age - ADULT_AGE
            systolic = _clip(rng.gauss(110 + 0.35 * over, 8), 92, 139)
            diastolic = _clip(rng.gauss(70 + 0.12 * over, 6), 58, 89)
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
                "code": _concept(LOINC, "8480-6", "Systolic blood pressure", "收缩压"),
                "valueQuantity": self._quantity(round(systolic), "mmHg", "mm[Hg]"),
            },
            {
                "code": _concept(LOINC, "8462-4", "Diastolic blood pressure", "舒张压"),
                "valueQuantity": self._quantity(round(diastolic), "mmHg", "mm[Hg]"),
            },
        ]
        self.out.append(self.gen.entry(observation, self.gen.full_url()))

    def _glucose(self, encounter_url: str, day: date, minutes: int, controlled: bool) -> None:
        # LOINC 14771-0 is fasting glucose in moles/volume (mmol/L, the unit used in
        # China); 1558-6 is the mass/volume (mg/dL) code and would not fit the unit.
        rng = self.rng
        if controlled:
            value = _clip(rng.gauss(6.6, 0.6), 4.8, 7.0)
        else:
            value = _clip(rng.gauss(9.2, 1.8), 7.1, 18.0)
        self._observe(
            encounter_url,
            day,
            minutes,
            "14771-0",
            "Fasting glucose [Moles/volume] in Serum or Plasma",
            "空腹血糖",
            round(value, 1),
            "mmol/L",
            "mmol/L",
            "laboratory",
        )

    def _heart_rate(self, age: int) -> tuple[str, str, str, float, str, str]:
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
        value = round(_clip(self.rng.gauss(mean, spread), low - 8, high + 10))
        return "8867-4", "Heart rate", "心率", value, "beats/minute", "/min"

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
        value = round(estimate * _clip(rng.gauss(1, 0.1), 0.75, 1.3), 1)
        return "29463-7", "Body weight", "体重", value, "kg", "kg"

    def _adult_weight(self) -> float:
        mean, spread = ADULT_WEIGHT_KG[self.person.male]
        return round(_clip(self.rng.gauss(mean, spread), 38, 130), 1)


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def generate_county(
    *, residents: int, seed: int, as_of: date = DEFAULT_AS_OF, county: County = COUNTY
) -> Iterator[Resource]:
    """Transaction Bundles for a synthetic county: organisations first, then households.

    The same ``residents``, ``seed``, ``as_of`` and ``county`` give identical Bundles.
    """
    if residents < 1:
        raise ValueError("residents must be at least 1")
    gen = _Generator(seed, as_of, county)

    def bundles() -> Iterator[Resource]:
        yield gen.organisations(residents)
        for household, village in gen.plan_households(residents):
            yield gen.household_bundle(household, village)

    return bundles()
