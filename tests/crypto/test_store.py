"""Sensitive identifiers at rest, through the HTTP API, on SQLite and PostgreSQL.

The raw database (resource, history, every index table, saved responses) never holds a
known ID number or phone; every way out of the store gives the plaintext back exactly;
exact search finds the right resource through the blind index.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import httpx
import orjson

from smartmed.demo.idcard import make_id_number
from smartmed.fhir.reindex import reindex
from tests.crypto.conftest import (
    RESIDENT,
    engine_of,
    leaks,
    patient,
    raw_rows,
    running,
    settings_for,
    without_audit,
)

ID_1 = make_id_number("110105", date(1949, 12, 31), 2)
ID_2 = make_id_number("330106", date(1987, 6, 4), 15)
ID_3 = make_id_number("440305", date(2001, 1, 9), 128)
PHONE_1, PHONE_2, PHONE_3 = "13812345678", "15900001111", "18622223333"
SECRETS = [ID_1, ID_2, ID_3, PHONE_1, PHONE_2, PHONE_3]


async def _ids(client: httpx.AsyncClient, query: str) -> list[str]:
    response = await client.get(query)
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []))


async def _create(client: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    response = await client.post(body["resourceType"], content=orjson.dumps(body))  # type: ignore[arg-type]
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


def _no_meta(body: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in body.items() if k not in ("id", "meta")}


async def test_raw_store_holds_no_plaintext_after_create_and_update(
    fresh_url: str, tmp_path: Path
) -> None:
    # given: patients created, one updated (new ID number and phone), one with a narrative
    # and a note repeating the ID number, a RelatedPerson and a Practitioner
    narrative = {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">张三 身份证 {ID_2}</div>',
    }
    async with running(settings_for(fresh_url)) as (_app, client):
        first = await _create(client, patient(ID_1, PHONE_1))
        second = await _create(client, patient(ID_3, PHONE_3, text=narrative))
        updated = dict(first) | patient(ID_2, PHONE_2)
        response = await client.put(f"Patient/{first['id']}", content=orjson.dumps(updated))
        assert response.status_code == 200, response.text
        related = {
            "resourceType": "RelatedPerson",
            "patient": {"reference": f"Patient/{second['id']}"},
            "identifier": [{"system": RESIDENT, "value": ID_1}],
            "telecom": [{"system": "sms", "value": PHONE_1}],
        }
        await _create(client, related)
        practitioner = {
            "resourceType": "Practitioner",
            "telecom": [{"system": "phone", "value": PHONE_2, "use": "work"}],
        }
        await _create(client, practitioner)
        # an Idempotency-Key response is saved in the database too
        response = await client.post(
            "Patient",
            content=orjson.dumps(patient(ID_3, PHONE_1)),
            headers={"Idempotency-Key": "crypto-1"},
        )
        assert response.status_code == 201, response.text
        again = await client.post(
            "Patient",
            content=orjson.dumps(patient(ID_3, PHONE_1)),
            headers={"Idempotency-Key": "crypto-1"},
        )
        assert again.status_code == 201
        assert again.json() == response.json()  # the saved body, revealed exactly
        # when: the raw rows are read without the protector
        rows = await raw_rows(fresh_url)
        # then: no table holds any of the values, yet every row count is what was written
        assert leaks(rows, SECRETS) == []
        assert len(without_audit(rows["resource"])) == 5
        assert len(without_audit(rows["resource_history"])) == 6
        assert sum("enc:v1:k1:" in r for r in rows["resource"]) == 5
        assert len(rows["idempotency_key"]) == 1
        assert "enc:v1:k1:" in rows["idempotency_key"][0]
        # identifier, phone, telecom of 3 patients; identifier, telecom of the related
        # person (an sms is no `phone`); phone, telecom of the practitioner
        assert sum("bidx:b1:" in r for r in rows["idx_token"]) == 3 * 3 + 2 + 2
        # and the API still gives the plaintext exactly as sent
        got = (await client.get(f"Patient/{second['id']}")).json()
        assert _no_meta(got) == patient(ID_3, PHONE_3, text=narrative)
    if fresh_url.startswith("sqlite"):
        # the database files themselves (pages, WAL) never saw the plaintext either
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("crypto.db*"))
        assert [s for s in SECRETS if s.encode() in raw] == []


async def test_every_way_out_reveals(fresh_url: str) -> None:
    # given: a patient, an observation about them, and a second version of the patient
    async with running(settings_for(fresh_url)) as (_app, client):
        created = await _create(client, patient(ID_1, PHONE_1))
        pid = created["id"]
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "subject": {
                "reference": f"Patient/{pid}",
                "identifier": {"system": RESIDENT, "value": ID_1},
            },
        }
        obs = await _create(client, observation)
        update = dict(created) | {"gender": "female"}
        assert (await client.put(f"Patient/{pid}", content=orjson.dumps(update))).status_code == 200
        expected_v2 = patient(ID_1, PHONE_1, gender="female")
        # then: read, vread, history, search, include, $everything carry the plaintext
        read = (await client.get(f"Patient/{pid}")).json()
        assert _no_meta(read) == expected_v2
        vread = (await client.get(f"Patient/{pid}/_history/1")).json()
        assert _no_meta(vread) == patient(ID_1, PHONE_1)
        history = (await client.get(f"Patient/{pid}/_history")).json()
        assert [_no_meta(e["resource"]) for e in history["entry"]] == [
            expected_v2,
            patient(ID_1, PHONE_1),
        ]
        found = (
            await client.get(f"Observation?_id={obs['id']}&_include=Observation:subject")
        ).json()
        by_type = {e["resource"]["resourceType"]: e["resource"] for e in found["entry"]}
        assert _no_meta(by_type["Patient"]) == expected_v2
        assert by_type["Observation"]["subject"]["identifier"]["value"] == ID_1
        everything = (await client.get(f"Patient/{pid}/$everything")).json()
        kinds = sorted(e["resource"]["resourceType"] for e in everything["entry"])
        assert kinds == ["Observation", "Patient"]
        assert ID_1 in orjson.dumps(everything).decode()
        by_identifier = await _ids(client, f"Observation?subject:identifier={RESIDENT}|{ID_1}")
        assert by_identifier == [obs["id"]]


async def test_exact_search_finds_exactly_the_right_patient(fresh_url: str) -> None:
    async with running(settings_for(fresh_url)) as (_app, client):
        # given: three patients with distinct ID numbers and phones
        ids = [
            (await _create(client, patient(n, p)))["id"]
            for n, p in [(ID_1, PHONE_1), (ID_2, PHONE_2), (ID_3, PHONE_3)]
        ]
        # then: each exact search finds its one patient
        for pid, number, phone in zip(
            ids, [ID_1, ID_2, ID_3], [PHONE_1, PHONE_2, PHONE_3], strict=True
        ):
            assert await _ids(client, f"Patient?identifier={RESIDENT}|{number}") == [pid]
            assert await _ids(client, f"Patient?identifier={number}") == [pid]
            assert await _ids(client, f"Patient?phone={phone}") == [pid]
            assert await _ids(client, f"Patient?telecom={phone}") == [pid]
            assert await _ids(client, f"Patient?identifier:not={RESIDENT}|{number}") == sorted(
                i for i in ids if i != pid
            )
        # an unprotected identifier and the e-mail still match as plain values
        assert await _ids(client, f"Patient?identifier=urn:smartmed:mrn|MRN-{ID_2[-6:]}") == [
            ids[1]
        ]
        assert await _ids(client, "Patient?telecom=someone@example.org") == sorted(ids)
        # the system alone, OR-ed values, a wrong system, a near miss: as the spec says
        assert await _ids(client, f"Patient?identifier={RESIDENT}|") == sorted(ids)
        both = f"Patient?identifier={RESIDENT}|{ID_1},{RESIDENT}|{ID_3}"
        assert await _ids(client, both) == sorted([ids[0], ids[2]])
        assert await _ids(client, f"Patient?identifier=urn:other|{ID_1}") == []
        assert await _ids(client, f"Patient?identifier={RESIDENT}|{ID_1[:-1]}") == []
        assert await _ids(client, f"Patient?phone={PHONE_1[:-1]}") == []
        # partial matches on protected values are not supported (documented)
        assert await _ids(client, f"Patient?_content={PHONE_1}") == []


async def test_reindex_keeps_the_blind_index(fresh_url: str) -> None:
    async with running(settings_for(fresh_url)) as (app, client):
        pid = (await _create(client, patient(ID_1, PHONE_1)))["id"]
        engine = engine_of(app)
        before = await raw_rows(fresh_url, ("idx_token", "idx_text"))
        # when: the index is rebuilt from the stored JSON
        result = await reindex(engine.db, engine.services.extractor)
        # then: the same rows, still without plaintext, and search still works
        assert result.resources == 1
        after = await raw_rows(fresh_url, ("idx_token", "idx_text"))
        assert sorted(without_audit(after["idx_token"])) == sorted(
            without_audit(before["idx_token"])
        )
        assert leaks(after, SECRETS) == []
        assert await _ids(client, f"Patient?identifier={RESIDENT}|{ID_1}") == [pid]
        assert await _ids(client, f"Patient?phone={PHONE_1}") == [pid]
