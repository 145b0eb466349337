"""The synthetic population: ages, sexes, households and chronic conditions (no FHIR here).

Every person is drawn first, with the national age structure and sex ratio of the 7th
population census; households are then assembled from that pool (so the households
never distort the age structure), and chronic conditions are assigned by age with the
published adult prevalence.

Sources:

* Age structure: 国家统计局《第七次全国人口普查公报（第五号）——人口年龄构成情况》
  (2021-05-11, census date 2020-11-01): 0–14 years 17.95 %, 15–59 years 63.35 %,
  60 years and over 18.70 %, of which 65 and over 13.50 %.
* Sex: the same census (主要数据情况): men 51.24 %, women 48.76 %.
* Adult (≥ 18) prevalence: 国家卫生健康委《中国居民营养与慢性病状况报告（2020年）》
  (Report on Nutrition and Chronic Diseases of Chinese Residents 2020, SCIO press
  conference 2020-12-23): hypertension 27.5 %, diabetes 11.9 %.

Modelling assumptions (plausible, not statistics): ages are spread evenly within 0–14,
15–59 and 60–64 and decline linearly within 65–99; household composition (siblings,
left-behind children living with grandparents, three-generation households, marriage
by age) uses the shares in the constants below; prevalence rises with age following the
relative weights ``HYPERTENSION_RISK`` / ``DIABETES_RISK`` — the steep age gradient every
Chinese survey reports (e.g. China Hypertension Survey, Wang Z. et al., Circulation
2018;137:2344–2356; Li Y. et al., BMJ 2020;369:m997) — scaled so the adult prevalence
equals the published national figure exactly (quota sampling per age band).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from smartmed.demo import names

# (first age, last age, share of the whole population in %) — 7th census, see above.
AGE_BANDS: tuple[tuple[int, int, float], ...] = (
    (0, 14, 17.95),
    (15, 59, 63.35),
    (60, 64, 18.70 - 13.50),
    (65, 99, 13.50),
)
MALE_SHARE = 0.5124  # 7th census: men 51.24 %

ADULT_AGE = 18
HYPERTENSION_PREVALENCE = 0.275  # adults ≥ 18, Report on Nutrition and Chronic Diseases 2020
DIABETES_PREVALENCE = 0.119  # adults ≥ 18, same report

# Relative risk by age band (first age of the band, weight): assumption, see module docstring.
HYPERTENSION_RISK: tuple[tuple[int, float], ...] = (
    (18, 1.0),
    (25, 1.5),
    (35, 3.5),
    (45, 7.0),
    (55, 10.5),
    (65, 13.5),
    (75, 14.5),
)
DIABETES_RISK: tuple[tuple[int, float], ...] = (
    (18, 1.0),
    (30, 1.6),
    (40, 3.0),
    (50, 5.0),
    (60, 6.5),
    (70, 7.0),
)
_MAX_PREVALENCE = 0.9

# Household composition (assumptions): number of siblings living together, share of
# children living with grandparents only (parents working away: 留守儿童), share of
# two-parent families, of three-generation families, of young adults still at home.
_SIBLINGS: tuple[tuple[int, float], ...] = ((0, 0.55), (1, 0.37), (2, 0.08))
_LEFT_BEHIND = 0.12
_TWO_PARENTS = 0.93
_THREE_GENERATIONS = 0.35
_AT_HOME = 0.3
_MAX_HOUSEHOLD = 5
# Probability of living with a spouse, by first age of the band (assumption).
_MARRIED = ((18, 0.15), (25, 0.55), (30, 0.85), (60, 0.8), (70, 0.65), (80, 0.4))


@dataclass(slots=True, eq=False)
class Person:
    """One resident; ``role`` is the relationship to the head of the household."""

    age: int
    male: bool
    role: str = "head"
    family: str = ""
    given: str = ""
    birth: date = date.min
    hypertension: bool = False
    diabetes: bool = False
    taken: bool = False

    @property
    def name(self) -> str:
        """The full name as written in Chinese: family name then given name."""
        return self.family + self.given


@dataclass(slots=True)
class Household:
    """Residents sharing a home; ``members[0]`` is the head."""

    members: list[Person] = field(default_factory=list)


def _band_value(bands: Sequence[tuple[int, float]], age: int) -> float:
    value = bands[0][1]
    for start, weight in bands:
        if age >= start:
            value = weight
    return value


def _largest_remainder(expected: Sequence[float], total: int) -> list[int]:
    """Integers summing to ``total``, each the floor or ceiling of its expected value."""
    counts = [int(e) for e in expected]
    order = sorted(range(len(expected)), key=lambda i: expected[i] - counts[i], reverse=True)
    for i in order[: max(0, total - sum(counts))]:
        counts[i] += 1
    return counts


def draw_people(rng: random.Random, count: int) -> list[Person]:
    """``count`` residents with the census age structure (band quotas) and sex ratio."""
    quotas = _largest_remainder([count * share / 100 for *_, share in AGE_BANDS], count)
    people = []
    for (first, last, _), quota in zip(AGE_BANDS, quotas, strict=True):
        ages = range(first, last + 1)
        weights = [100 - a if first >= 65 else 1 for a in ages]  # linear decline from 65
        for age in rng.choices(ages, weights=weights, k=quota):
            people.append(Person(age=age, male=rng.random() < MALE_SHARE))
    rng.shuffle(people)
    return people


class _Pool:
    """Residents not yet placed in a household, by sex and age."""

    def __init__(self, rng: random.Random, people: Sequence[Person]) -> None:
        self._rng = rng
        self._by: dict[tuple[bool, int], list[Person]] = defaultdict(list)
        for person in people:
            self._by[(person.male, person.age)].append(person)

    def remove(self, person: Person) -> None:
        self._by[(person.male, person.age)].remove(person)
        person.taken = True

    def take(self, male: bool | None, lo: int, hi: int, target: int) -> Person | None:
        """The unplaced resident of that sex (None: either) aged lo..hi nearest to target."""
        lo, hi = max(lo, 0), min(hi, 99)
        if lo > hi:
            return None
        target = min(max(target, lo), hi)
        if male is None:
            sexes: tuple[bool, ...] = (True, False) if self._rng.random() < 0.5 else (False, True)
        else:
            sexes = (male,)
        for distance in range(hi - lo + 1):
            for age in (target - distance, target + distance) if distance else (target,):
                if not lo <= age <= hi:
                    continue
                for sex in sexes:
                    bucket = self._by.get((sex, age))
                    if bucket:
                        person = bucket.pop()
                        person.taken = True
                        return person
        return None


def _spouse(pool: _Pool, rng: random.Random, person: Person) -> Person | None:
    """A partner for ``person``: the husband typically 0–4 years older."""
    gap = rng.randint(0, 4)
    if person.male:
        return pool.take(False, max(ADULT_AGE, person.age - 10), person.age + 5, person.age - gap)
    return pool.take(True, max(ADULT_AGE, person.age - 5), person.age + 10, person.age + gap)


def _grandparents(pool: _Pool, rng: random.Random, eldest: int) -> list[Person]:
    """A grandparent couple (or one grandparent) for children whose eldest is ``eldest``."""
    grandfather = pool.take(True, eldest + 38, 99, eldest + rng.randint(50, 60))
    if grandfather is not None:
        grandmother = _spouse(pool, rng, grandfather) if rng.random() < _TWO_PARENTS else None
        return [grandfather] + ([grandmother] if grandmother else [])
    grandmother = pool.take(False, eldest + 38, 99, eldest + rng.randint(48, 58))
    return [grandmother] if grandmother else []


def _family(pool: _Pool, rng: random.Random, children: list[Person]) -> Household:
    """A household around a group of siblings (eldest first)."""
    eldest, youngest = children[0].age, children[-1].age
    if rng.random() >= _LEFT_BEHIND:
        mother = pool.take(False, eldest + 20, youngest + 45, eldest + rng.randint(23, 32))
        if mother is not None:
            father = _spouse(pool, rng, mother) if rng.random() < _TWO_PARENTS else None
            head = father or mother
            members = [head] + ([mother] if father else [])
            if father:
                mother.role = "spouse"
            for child in children:
                child.role = "child"
            members += children
            if len(members) <= _MAX_HOUSEHOLD - 2 and rng.random() < _THREE_GENERATIONS:
                grandfather = pool.take(
                    True, head.age + 20, head.age + 40, head.age + rng.randint(24, 32)
                )
                elders = [grandfather] if grandfather else []
                if grandfather is None or rng.random() < _TWO_PARENTS:
                    anchor = grandfather.age if grandfather else head.age + 26
                    grandmother = pool.take(
                        False,
                        max(head.age + 18, anchor - 8),
                        anchor + 3,
                        anchor - rng.randint(0, 4),
                    )
                    elders += [grandmother] if grandmother else []
                for elder in elders:
                    elder.role = "parent"
                members += elders
            return Household(members)
    elders = _grandparents(pool, rng, eldest)
    if elders:
        if len(elders) == 2:
            elders[1].role = "spouse"
        for child in children:
            child.role = "grandchild"
        return Household(elders + children)
    relative = pool.take(None, eldest + 18, 99, eldest + 30)
    if relative is not None:
        for child in children:
            child.role = "relative"
        return Household([relative] + children)
    for child in children[1:]:
        child.role = "relative"
    return Household(list(children))


def _adult_household(pool: _Pool, rng: random.Random, person: Person) -> Household:
    """A household for an adult not placed yet: at home with parents, a couple, or alone."""
    if person.age <= 32 and rng.random() < _AT_HOME:
        parent = pool.take(True, person.age + 20, person.age + 40, person.age + rng.randint(24, 32))
        parent = parent or pool.take(
            False, person.age + 20, person.age + 40, person.age + rng.randint(22, 30)
        )
        if parent is not None:
            other = _spouse(pool, rng, parent) if rng.random() < _TWO_PARENTS else None
            person.role = "child"
            if other is None:
                return Household([parent, person])
            other.role = "spouse"
            head, partner = (parent, other) if parent.male else (other, parent)
            head.role, partner.role = "head", "spouse"
            return Household([head, partner, person])
    if rng.random() < _band_value(_MARRIED, person.age):
        mate = _spouse(pool, rng, person)
        if mate is not None:
            husband, wife = (person, mate) if person.male else (mate, person)
            husband.role, wife.role = "head", "spouse"
            return Household([husband, wife])
    return Household([person])


def form_households(rng: random.Random, people: Sequence[Person]) -> list[Household]:
    """Place every person in exactly one household of 1–5 members."""
    pool = _Pool(rng, people)
    households: list[Household] = []
    sibling_counts = [n for n, _ in _SIBLINGS]
    sibling_weights = [w for _, w in _SIBLINGS]
    for child in people:
        if child.taken or child.age >= ADULT_AGE:
            continue
        pool.remove(child)
        group = [child]
        for _ in range(rng.choices(sibling_counts, weights=sibling_weights)[0]):
            gap = rng.randint(2, 5) * rng.choice((-1, 1))
            sibling = pool.take(
                None, child.age - 8, min(ADULT_AGE - 1, child.age + 8), child.age + gap
            )
            if sibling is not None:
                group.append(sibling)
        group.sort(key=lambda p: -p.age)
        households.append(_family(pool, rng, group))
    for person in people:
        if not person.taken:
            pool.remove(person)
            households.append(_adult_household(pool, rng, person))
    rng.shuffle(households)
    return households


def anniversary(day: date, years: int) -> date:
    """The same calendar day ``years`` later (or earlier); 29 February becomes 1 March."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a common year
        return date(day.year + years, 3, 1)


def birth_date(rng: random.Random, age: int, as_of: date) -> date:
    """A birth date giving exactly ``age`` completed years on ``as_of``."""
    latest = anniversary(as_of, -age)
    earliest = anniversary(as_of, -age - 1) + timedelta(days=1)
    return earliest + timedelta(days=rng.randint(0, (latest - earliest).days))


def age_on(birth: date, day: date) -> int:
    """Completed years of age on ``day``."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def name_household(rng: random.Random, household: Household) -> None:
    """Family and given names: children take the father's family name, wives keep theirs.

    Needs the birth dates (the given name fits the birth cohort).
    """
    head = household.members[0]
    head.family = names.family_name(rng)
    for person in household.members[1:]:
        paternal_line = person.role in ("child", "grandchild") and head.male
        if paternal_line or (person.role == "parent" and person.male):
            person.family = head.family
        else:
            person.family = names.family_name(rng)
    for person in household.members:
        person.given = names.given_name(rng, male=person.male, birth_year=person.birth.year)


def _assign(
    rng: random.Random,
    adults: Sequence[Person],
    attribute: str,
    prevalence: float,
    risk: Sequence[tuple[int, float]],
) -> None:
    """Mark ``round(prevalence × adults)`` adults, spread over age bands by relative risk."""
    bands: dict[float, list[Person]] = defaultdict(list)
    for person in adults:
        bands[_band_value(risk, person.age)].append(person)
    if not adults:
        return
    weights = sorted(bands)
    target = prevalence * len(adults)
    low, high = 0.0, 1.0 / min(weights)
    for _ in range(60):  # bisection for the scale k: Σ n_b · min(cap, k·r_b) = target
        k = (low + high) / 2
        if sum(len(bands[w]) * min(_MAX_PREVALENCE, k * w) for w in weights) < target:
            low = k
        else:
            high = k
    expected = [len(bands[w]) * min(_MAX_PREVALENCE, low * w) for w in weights]
    counts = _largest_remainder(expected, round(target))
    for w, count in zip(weights, counts, strict=True):
        for person in rng.sample(bands[w], min(count, len(bands[w]))):
            setattr(person, attribute, True)


def assign_conditions(rng: random.Random, people: Sequence[Person]) -> None:
    """Hypertension and diabetes among adults at the published prevalence."""
    adults = [p for p in people if p.age >= ADULT_AGE]
    _assign(rng, adults, "hypertension", HYPERTENSION_PREVALENCE, HYPERTENSION_RISK)
    _assign(rng, adults, "diabetes", DIABETES_PREVALENCE, DIABETES_RISK)
