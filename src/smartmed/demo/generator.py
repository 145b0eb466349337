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

Access (docs/access.md): family-doctor Contracts name the township's team; in a household
with an adult member besides the head who has a phone, that member is the family
representative, and every other member signs a family-delegation Consent naming their
RelatedPerson, so the representative can act for the household.

Contracting programme (``demo.contracting``): the service-package catalogue in the first
Bundle; packages, purchases, delivered services, renewals, transfers and terminations.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from smartmed.demo import idcard, names
from smartmed.demo.clinical import Clinical
from smartmed.demo.codes import (
    CARE_TEAM_SYSTEM,
    DEFAULT_AS_OF,
    HL7_ORG_TYPE,
    HL7_PRACTITIONER_ROLE,
    LOINC,
    ORG_SYSTEM,
    ORG_TYPE_SYSTEM,
    PRACTITIONER_SYSTEM,
    QUALIFICATION_SYSTEM,
    RESIDENT_ID_SYSTEM,
    ROLE_SYSTEM,
    SNOMED,
    SPECIALTY_SYSTEM,
    STAFF_ROLE_SYSTEM,
    V2_0131,
    V2_0203,
    V3_MARITAL,
    V3_ROLE,
    Resource,
    entry,
    org_ref,
    staff_ref,
)
from smartmed.demo.codes import concept as _concept
from smartmed.demo.contracting import Programme, catalogue_entries
from smartmed.demo.population import (
    ADULT_AGE,
    Household,
    Person,
    assign_conditions,
    birth_date,
    draw_people,
    form_households,
    name_household,
)

__all__ = [
    "CARE_TEAM_SYSTEM",
    "DEFAULT_AS_OF",
    "ORG_SYSTEM",
    "PRACTITIONER_SYSTEM",
    "RESIDENT_ID_SYSTEM",
    "ROLE_SYSTEM",
    "County",
    "generate_county",
    "org_ref",
]

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
    "pharmacist": "执业药师",
    "administrator": "卫生管理人员",
}

# PractitionerRole.code by staff role: HL7 practitioner-role where it has one, else ours.
ROLE_CODES: dict[str, tuple[str, str, str, str]] = {
    "doctor": (HL7_PRACTITIONER_ROLE, "doctor", "Doctor", "医生"),
    "nurse": (HL7_PRACTITIONER_ROLE, "nurse", "Nurse", "护士"),
    "pharmacist": (HL7_PRACTITIONER_ROLE, "pharmacist", "Pharmacist", "药师"),
    "ict": (HL7_PRACTITIONER_ROLE, "ict", "ICT professional", "信息平台管理员"),
    "admin": (STAFF_ROLE_SYSTEM, "institution-admin", "Institution administrator", "机构管理员"),
    "analyst": (STAFF_ROLE_SYSTEM, "analyst", "Health-authority analyst", "卫生统计分析员"),
}
PHARMACY_SPECIALTY = (SNOMED, "394600006", "Clinical pharmacology")
ADMINISTRATION = (SPECIALTY_SYSTEM, "health-administration", "卫生管理")

# Shared diagnostic centres of the county medical community (县域医共体资源共享中心),
# run by the county hospital: identifier suffix, Chinese name.
SHARED_CENTRES: tuple[tuple[str, str], ...] = (
    ("LAB", "医学检验中心"),
    ("IMG", "医学影像中心"),
    ("ECG", "心电诊断中心"),
    ("PATH", "病理诊断中心"),
)

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
    role: str  # a key of ROLE_CODES: doctor, nurse, pharmacist, admin, analyst, ict
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


def practitioner_ref(staff: Staff) -> Resource:
    """A conditional reference to a practitioner by identifier."""
    return staff_ref(staff.code, staff.person.name)


# Family-doctor contracting coverage: National Health Commission press conference,
# 2017-09-15 (国家卫生计生委新闻发布会): over 35 % of the whole population and over 65 %
# of key populations (aged 65+, children 0-6, hypertension, diabetes, ...) signed.
KEY_POPULATION_SIGNING_RATE = 0.65
OTHER_SIGNING_RATE = 0.22  # with ~40 % key population, ~35 % overall
CONTRACT_TEAM_EXTENSION = "urn:smartmed:extension:contract-care-team"
CONTRACT_TYPE_SYSTEM = "urn:smartmed:contract-type"


# Family delegation (docs/access.md): the category and actions the access policy reads.
DELEGATION_CATEGORY_SYSTEM = "urn:smartmed:consent-category"
DELEGATION_ACTION_SYSTEM = "urn:smartmed:delegation-action"
DELEGATED_ACTIONS = ("view-records", "book-appointments", "renew-prescriptions", "receive-alerts")
DELEGATION_AGE_DAYS = 90  # signed this long before ``as_of``
DELEGATION_DAYS = 3 * 365  # valid for three years
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _signing_rate(person: Person) -> float:
    key = person.age >= 65 or person.age <= 6 or person.hypertension or person.diabetes
    return KEY_POPULATION_SIGNING_RATE if key else OTHER_SIGNING_RATE


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
        self.contract_rng = random.Random(master.getrandbits(64))
        # Packages, renewals, services (demo.contracting), after the streams above.
        self.programme = Programme(self, random.Random(master.getrandbits(64)))
        self.as_of = as_of
        self.county = county
        self.townships: list[Township] = []
        self._staff_count = 0
        self.staff: list[Staff] = []
        self.department_doctors: dict[str, list[Staff]] = {}
        self.department_names: dict[str, str] = {}  # every organisation's name by code
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

    entry = staticmethod(entry)

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
            self.department_names[code] = name
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
            "CH-PHARM",
            hospital + "药剂科",
            department,
            ("department", "医技科室"),
            ["城关健康路1号"],
            "CH",
        )
        staff.append(self._staff("CH-PHARM", "pharmacist", "pharmacist", PHARMACY_SPECIALTY))
        staff.append(self._staff("CH", "admin", "administrator", ADMINISTRATION))
        for suffix, centre in SHARED_CENTRES:
            add_org(
                f"CH-{suffix}",
                f"{county}{centre}",
                provider,
                ("exam-centre", "县域共享检查中心"),
                ["城关健康路1号"],
                "CH",
            )
        add_org(
            "HA",
            f"{county}卫生健康局",
            ("govt", "Government"),
            ("health-authority", "县级卫生健康行政部门"),
            ["城关人民路2号"],
            None,
        )
        staff.append(self._staff("HA", "analyst", "administrator", ADMINISTRATION))
        staff.append(self._staff("HA", "ict", "administrator", ADMINISTRATION))
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
            # One retail pharmacy (零售药店) per township, with a licensed pharmacist.
            pharmacy = f"PH{t:0{width}d}"
            add_org(
                pharmacy,
                f"{town}康民大药房",
                provider,
                ("pharmacy", "零售药店"),
                [town, "人民路18号"],
                None,
            )
            staff.append(self._staff(pharmacy, "pharmacist", "pharmacist", PHARMACY_SPECIALTY))
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

        self.staff = staff
        for member in staff:
            if member.role == "doctor":
                self.department_doctors.setdefault(member.org, []).append(member)
        for member in staff:
            entries += self._staff_entries(member, org_urls[member.org])
        for township in self.townships:
            entries.append(self._care_team(township, org_urls[township.code]))
        entries += catalogue_entries(self.full_url)  # the service packages contracts name
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
            "code": [_concept(*ROLE_CODES[staff.role])],
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
        related_urls: dict[int, str] = {}
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
                related_url = related_urls[i] = self.full_url()
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
        contracts: list[Resource] = []  # with purchases and extra delivered services
        for person, url in zip(members, urls, strict=True):
            records = Clinical(self, person, url, village, gp).entries()
            clinical += records
            signed = self.contract_rng.random() < _signing_rate(person)
            contracts += self.programme.resident(person, url, township, gp, records, signed=signed)
        # The family representative: the first adult member after the head who has a
        # phone (so a RelatedPerson with telecom); every other member delegates to them.
        representative = next(
            (
                i
                for i, person in enumerate(members)
                if i > 0 and person.age >= ADULT_AGE and phones[i] is not None
            ),
            None,
        )
        delegations = []
        if representative is not None:
            delegations = [
                self._delegation(person, url, related_urls[representative])
                for i, (person, url) in enumerate(zip(members, urls, strict=True))
                if i != representative
            ]
        return _bundle(patients + related + clinical + contracts + delegations)

    def _delegation(self, person: Person, patient_url: str, representative_url: str) -> Resource:
        """A family-delegation Consent: ``person`` lets the household's representative
        see their records, book appointments, renew prescriptions and receive alerts
        for them, for three years (docs/access.md, "Family delegation").

        Modelling assumption, not a statistic: every household with an adult member
        besides the head who has a phone names that member its representative.
        """
        start = self.as_of - timedelta(days=DELEGATION_AGE_DAYS)
        end = start + timedelta(days=DELEGATION_DAYS)
        consent: Resource = {
            "resourceType": "Consent",
            "status": "active",
            "scope": _concept(CONSENT_SCOPE, "patient-privacy", "Privacy Consent", "隐私授权"),
            "category": [
                _concept(
                    DELEGATION_CATEGORY_SYSTEM, "family-delegation", "Family delegation", "家庭授权"
                )
            ],
            "patient": {"reference": patient_url, "display": person.name},
            "dateTime": f"{start.isoformat()}T09:00:00+08:00",
            "policyRule": {"coding": [{"system": V3_ACT_CODE, "code": "OPTIN"}]},
            "provision": {
                "type": "permit",
                "period": {"start": start.isoformat(), "end": end.isoformat()},
                "actor": [
                    {
                        "role": {"coding": [{"system": V3_ROLE, "code": "DELEGATEE"}]},
                        "reference": {"reference": representative_url},
                    }
                ],
                "action": [
                    {"coding": [{"system": DELEGATION_ACTION_SYSTEM, "code": code}]}
                    for code in DELEGATED_ACTIONS
                ],
            },
        }
        return self.entry(consent, self.full_url())

    def _contract(
        self, person: Person, patient_url: str, township: Township, gp: Staff
    ) -> Resource:
        """A family-doctor contract (家庭医生签约服务协议) of one year with the township team.

        The team is named by the extension the access policy reads
        (``urn:smartmed:extension:contract-care-team``): the contract gives the team's
        members access to the resident's records (docs/access.md).
        """
        rng = self.contract_rng
        start = self.as_of - timedelta(days=rng.randrange(365))
        end = start + timedelta(days=365)
        team = f"CareTeam?identifier={CARE_TEAM_SYSTEM}|{township.code}-FDT"
        contract: Resource = {
            "resourceType": "Contract",
            "extension": [{"url": CONTRACT_TEAM_EXTENSION, "valueReference": {"reference": team}}],
            "status": "executed",
            "issued": f"{start.isoformat()}T09:00:00+08:00",
            "applies": {"start": start.isoformat(), "end": end.isoformat()},
            "subject": [{"reference": patient_url, "display": person.name}],
            "authority": [org_ref(township.code)],
            "type": _concept(
                CONTRACT_TYPE_SYSTEM, "family-doctor", "Family doctor contract", "家庭医生签约服务"
            ),
            "author": practitioner_ref(gp),
            "signer": [
                {
                    "type": {
                        "system": "http://terminology.hl7.org/CodeSystem/contractsignertypecodes",
                        "code": "PRIMARY",
                    },
                    "party": {"reference": patient_url},
                    "signature": [
                        {
                            "type": [
                                {
                                    "system": "urn:iso-astm:E1762-95:2013",
                                    "code": "1.2.840.10065.1.12.1.7",
                                    "display": "Consent Signature",
                                }
                            ],
                            "when": f"{start.isoformat()}T09:00:00+08:00",
                            "who": {"reference": patient_url},
                        }
                    ],
                }
            ],
        }
        return self.entry(contract, self.full_url())

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
