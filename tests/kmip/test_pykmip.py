"""shadowkeep-server against a real KMIP client (PyKMIP 0.11), one test per capability.

Key material never appears in assertions or output: tests compare SHA-256 fingerprints.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import pytest
from kmip.core import attributes as kattrs
from kmip.core import enums
from kmip.core import exceptions as core_exceptions
from kmip.core.factories.attributes import AttributeFactory
from kmip.core.messages.contents import ProtocolVersion
from kmip.core.objects import TemplateAttribute
from kmip.pie import exceptions as pie_exceptions
from kmip.pie import objects as pie_objects

import kmipwire as w
from kmipserver import dev_config, make_client

AES = enums.CryptographicAlgorithm.AES
AT = enums.AttributeType
Reason = enums.ResultReason
FACTORY = AttributeFactory()
ALL_VERSIONS = [(1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]


# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class KeySummary:
    """What a Get returned, without the material itself."""

    algorithm: enums.CryptographicAlgorithm
    length: int
    nbytes: int
    fingerprint: str  # SHA-256 of the material, hex
    all_zero: bool


def fingerprint(material: bytes) -> str:
    return hashlib.sha256(material).hexdigest()


def get_key(c, uid: str) -> KeySummary:
    key = c.get(uid)
    if not isinstance(key, pie_objects.SymmetricKey):  # (not an assert: its repr holds the key)
        pytest.fail(f"Get {uid} returned a {type(key).__name__}")
    value = bytes(key.value)
    return KeySummary(key.cryptographic_algorithm, key.cryptographic_length, len(value),
                      fingerprint(value), not any(value))


def attr(kind, value, index=None):
    return FACTORY.create_attribute(kind, value, index)


def asi(namespace: str, data: str):
    return attr(AT.APPLICATION_SPECIFIC_INFORMATION,
                {"application_namespace": namespace, "application_data": data})


def usage_mask():
    return attr(AT.CRYPTOGRAPHIC_USAGE_MASK,
                [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT])


def aes_template(bits: int, *extra) -> TemplateAttribute:
    return TemplateAttribute(attributes=[
        attr(AT.CRYPTOGRAPHIC_ALGORITHM, AES),
        attr(AT.CRYPTOGRAPHIC_LENGTH, bits),
        usage_mask(),
        *extra,
    ])


def ok(result):
    status = result.result_status.value
    assert status == enums.ResultStatus.SUCCESS, (
        f"{status}: {result.result_reason and result.result_reason.value}: "
        f"{result.result_message and result.result_message.value}")
    return result


def failed(result, reason: enums.ResultReason):
    status = result.result_status.value
    got = result.result_reason.value if result.result_reason is not None else None
    message = result.result_message.value if result.result_message is not None else None
    assert status == enums.ResultStatus.OPERATION_FAILED, f"expected {reason.name}, got {status}"
    assert got == reason, f"expected {reason.name}, got {got}: {message}"
    return message


def create(c, bits: int = 256, *extra) -> str:
    """Create through the proxy, so any attribute can ride in the template."""
    result = ok(c.proxy.create(enums.ObjectType.SYMMETRIC_KEY, aes_template(bits, *extra)))
    assert result.object_type == enums.ObjectType.SYMMETRIC_KEY
    assert isinstance(result.uuid, str) and result.uuid
    return result.uuid


def plain(value):
    """A PyKMIP attribute value as a plain Python value."""
    if isinstance(value, kattrs.Name):
        return value.name_value.value
    if isinstance(value, kattrs.ApplicationSpecificInformation):
        return (value.application_namespace, value.application_data)
    return value.value


def attribute_map(attribute_list) -> dict[str, list]:
    out: dict[str, list] = {}
    for a in attribute_list:
        out.setdefault(a.attribute_name.value, []).append(plain(a.attribute_value))
    return out


def state(c, uid: str) -> enums.State:
    # Ask for State alone: PyKMIP cannot parse every attribute (Revocation Reason).
    _, attrs = c.get_attributes(uid, ["State"])
    values = attribute_map(attrs)
    assert list(values) == ["State"], f"asked for State, got {list(values)}"
    assert len(values["State"]) == 1
    return values["State"][0]


def locate(c, *attributes) -> list[str]:
    return list(c.locate(attributes=list(attributes)) or [])


def raw_client(server) -> w.RawClient:
    return w.RawClient(server.host, server.port, server.ca, server.cert, server.key)


def operation_failure(exc_info) -> enums.ResultReason:
    return exc_info.value.reason


# ---------------------------------------------------------------- Discover Versions, Query


def test_discover_versions_lists_1_4_down_to_1_0(client):
    result = ok(client.proxy.discover_versions())
    versions = [(v.major, v.minor) for v in result.protocol_versions]
    assert versions == ALL_VERSIONS


def test_discover_versions_answers_with_the_requested_subset(client):
    result = ok(client.proxy.discover_versions(protocol_versions=[ProtocolVersion(1, 2)]))
    assert [(v.major, v.minor) for v in result.protocol_versions] == [(1, 2)]

    result = ok(client.proxy.discover_versions(
        protocol_versions=[ProtocolVersion(1, 1), ProtocolVersion(1, 3), ProtocolVersion(3, 7)]))
    assert sorted((v.major, v.minor) for v in result.protocol_versions) == [(1, 1), (1, 3)]

    # None of them supported: an empty list (KMIP 1.4, 4.26), not an error.
    result = ok(client.proxy.discover_versions(protocol_versions=[ProtocolVersion(3, 7)]))
    assert list(result.protocol_versions or []) == []


def test_query_operations_objects_server_information_and_namespaces(client):
    Q = enums.QueryFunction
    result = ok(client.proxy.query(query_functions=[
        Q.QUERY_OPERATIONS, Q.QUERY_OBJECTS, Q.QUERY_SERVER_INFORMATION,
        Q.QUERY_APPLICATION_NAMESPACES]))
    ops = {enums.Operation(getattr(o, "value", o)) for o in result.operations}
    Op = enums.Operation
    expected = {Op.CREATE, Op.REGISTER, Op.LOCATE, Op.GET, Op.GET_ATTRIBUTES,
                Op.GET_ATTRIBUTE_LIST, Op.ADD_ATTRIBUTE, Op.MODIFY_ATTRIBUTE,
                Op.DELETE_ATTRIBUTE, Op.ACTIVATE, Op.REVOKE, Op.DESTROY, Op.QUERY,
                Op.DISCOVER_VERSIONS}
    assert expected <= ops, f"missing: {sorted(o.name for o in expected - ops)}"
    # Nothing advertised that the server does not do.
    assert not ops & {Op.ENCRYPT, Op.DECRYPT, Op.CREATE_KEY_PAIR, Op.REKEY, Op.CERTIFY}
    assert [enums.ObjectType(getattr(o, "value", o)) for o in result.object_types] == [enums.ObjectType.SYMMETRIC_KEY]
    vendor = str(result.vendor_identification.value if hasattr(result.vendor_identification, "value")
                 else result.vendor_identification)
    assert "shadowkeep" in vendor.lower(), vendor
    namespaces = [str(getattr(n, "value", n)) for n in result.application_namespaces]
    assert "LIBRARY-LTO" in namespaces, namespaces

    only_objects = ok(client.proxy.query(query_functions=[Q.QUERY_OBJECTS]))
    assert not only_objects.operations
    assert [enums.ObjectType(getattr(o, "value", o)) for o in only_objects.object_types] == [enums.ObjectType.SYMMETRIC_KEY]


# ---------------------------------------------------------------- Create, Register, Get


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_create_aes_key_and_get_its_material(client, bits):
    uid = client.create(AES, bits, name=f"AES-{bits}")
    key = get_key(client, uid)
    assert (key.algorithm, key.length, key.nbytes) == (AES, bits, bits // 8)
    assert not key.all_zero


def test_two_creates_give_different_ids_and_material(client):
    a = client.create(AES, 256)
    b = client.create(AES, 256)
    assert a != b
    fa, fb = get_key(client, a).fingerprint, get_key(client, b).fingerprint
    assert fa != fb
    # Get is stable: the same key twice is the same material.
    assert get_key(client, a).fingerprint == fa


def test_create_refuses_a_length_aes_does_not_have(client):
    result = client.proxy.create(enums.ObjectType.SYMMETRIC_KEY,
                                 aes_template(100, attr(AT.NAME, "BAD-LENGTH")))
    failed(result, Reason.INVALID_FIELD)
    assert locate(client, attr(AT.NAME, "BAD-LENGTH")) == []


@pytest.mark.parametrize("bits", [128, 256])
def test_register_raw_key_and_get_it_back_byte_identical(client, bits):
    material = os.urandom(bits // 8)
    want = fingerprint(material)
    uid = client.register(pie_objects.SymmetricKey(AES, bits, material, name=f"REG-{bits}"))
    key = get_key(client, uid)
    assert (key.algorithm, key.length, key.nbytes) == (AES, bits, bits // 8)
    assert key.fingerprint == want
    assert locate(client, attr(AT.NAME, f"REG-{bits}")) == [uid]


def test_register_transparent_symmetric_key_and_get_it_as_raw(server, client):
    material = os.urandom(32)
    want = fingerprint(material)
    name = w.struct_(w.T.NAME, w.text(w.T.NAME_VALUE, "TSK-1"),
                     w.enum(w.T.NAME_TYPE, enums.NameType.UNINTERPRETED_TEXT_STRING))
    payload = w.struct_(
        w.T.REQUEST_PAYLOAD,
        w.enum(w.T.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY),
        w.struct_(w.T.TEMPLATE_ATTRIBUTE,
                  w.attribute("Cryptographic Usage Mask", w.integer(w.T.ATTRIBUTE_VALUE, 12)),
                  w.attribute("Name", name)),
        w.struct_(w.T.SYMMETRIC_KEY, w.struct_(
            w.T.KEY_BLOCK,
            w.enum(w.T.KEY_FORMAT_TYPE, enums.KeyFormatType.TRANSPARENT_SYMMETRIC_KEY),
            w.struct_(w.T.KEY_VALUE, w.struct_(w.T.KEY_MATERIAL, w.bytes_(w.T.KEY, material))),
            w.enum(w.T.CRYPTOGRAPHIC_ALGORITHM, AES),
            w.integer(w.T.CRYPTOGRAPHIC_LENGTH, 256))),
    )
    with raw_client(server) as raw:
        result = raw.call(enums.Operation.REGISTER, payload)
    assert result.status == enums.ResultStatus.SUCCESS, f"{result.reason}: {result.message}"
    assert result.operation == enums.Operation.REGISTER
    uid = result.payload.child(w.T.UNIQUE_IDENTIFIER).value
    key = get_key(client, uid)
    assert (key.algorithm, key.length, key.fingerprint) == (AES, 256, want)
    assert locate(client, attr(AT.NAME, "TSK-1")) == [uid]


@pytest.mark.parametrize("version", [enums.KMIPVersion.KMIP_1_0, enums.KMIPVersion.KMIP_1_1,
                                     enums.KMIPVersion.KMIP_1_3, enums.KMIPVersion.KMIP_1_4])
def test_create_locate_get_at_every_protocol_version(server, version):
    with make_client(server, version) as c:
        uid = c.create(AES, 256, name=f"V-{version.name}")
        assert locate(c, attr(AT.NAME, f"V-{version.name}")) == [uid]
        key = get_key(c, uid)
        assert (key.length, key.nbytes) == (256, 32)
    # The response speaks the request's version.
    major, minor = (int(x) for x in version.name.split("_")[1:])
    with raw_client(server) as raw:
        response = raw.roundtrip(w.request(
            enums.Operation.QUERY,
            w.struct_(w.T.REQUEST_PAYLOAD, w.enum(w.T.QUERY_FUNCTION, enums.QueryFunction.QUERY_OBJECTS)),
            (major, minor)))
    assert response.version == (major, minor)
    assert response.items[0].status == enums.ResultStatus.SUCCESS


# ---------------------------------------------------------------- Locate


def test_locate_by_name(client):
    a = client.create(AES, 256, name="LOC-A")
    client.create(AES, 256, name="LOC-B")
    assert locate(client, attr(AT.NAME, "LOC-A")) == [a]


def test_locate_by_object_type_and_state(client):
    active = client.create(AES, 256)
    k192 = client.create(AES, 192)
    pre = {client.create(AES, 128), k192}
    client.activate(active)
    symmetric = attr(AT.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY)
    assert locate(client, symmetric, attr(AT.STATE, enums.State.ACTIVE)) == [active]
    assert set(locate(client, symmetric, attr(AT.STATE, enums.State.PRE_ACTIVE))) == pre
    assert set(locate(client, symmetric)) == pre | {active}
    assert locate(client, symmetric, attr(AT.STATE, enums.State.DEACTIVATED)) == []
    # Cryptographic Length narrows it further.
    assert locate(client, symmetric, attr(AT.CRYPTOGRAPHIC_LENGTH, 192)) == [k192]
    assert locate(client, attr(AT.CRYPTOGRAPHIC_ALGORITHM, AES), attr(AT.CRYPTOGRAPHIC_LENGTH, 256)) == [active]
    # Maximum Items caps the answer.
    capped = list(client.locate(maximum_items=2, attributes=[symmetric]) or [])
    assert len(capped) == 2 and set(capped) <= pre | {active}


def test_locate_by_application_specific_information(client):
    a = create(client, 256, asi("LIBRARY-LTO", "0A1B2C"))
    create(client, 256, asi("LIBRARY-LTO", "FFFF00"))
    create(client, 256, asi("VENDOR-LIBRARY-LTO", "0A1B2C"))
    create(client, 256)
    assert locate(client, asi("LIBRARY-LTO", "0A1B2C")) == [a]
    assert locate(client, asi("LIBRARY-LTO", "000000")) == []


def test_locate_of_a_name_that_does_not_exist_is_empty(client):
    client.create(AES, 256, name="PRESENT")
    assert locate(client, attr(AT.NAME, "NO-SUCH-NAME")) == []



def test_locate_pages_with_offset_items_newest_first(server):
    with make_client(server, enums.KMIPVersion.KMIP_1_4) as c:
        made = [c.create(AES, 256, name=f"PAGE-{i}") for i in range(5)]
        pages = [list(c.locate(maximum_items=2, offset_items=offset) or []) for offset in (0, 2, 4)]
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [uid for page in pages for uid in page] == made[::-1]
        assert list(c.locate(maximum_items=2, offset_items=5) or []) == []

# ---------------------------------------------------------------- attributes


def test_get_attributes_names_and_values(client):
    before = int(time.time())
    uid = create(client, 256, attr(AT.NAME, "ATTR-KEY"), asi("LIBRARY-LTO", "ABCDEF"))
    after = int(time.time())
    got_uid, attrs = client.get_attributes(uid)
    assert got_uid == uid
    values = attribute_map(attrs)
    assert values["Unique Identifier"] == [uid]
    assert values["Object Type"] == [enums.ObjectType.SYMMETRIC_KEY]
    assert values["Cryptographic Algorithm"] == [AES]
    assert values["Cryptographic Length"] == [256]
    assert values["State"] == [enums.State.PRE_ACTIVE]
    assert values["Name"] == ["ATTR-KEY"]
    assert values["Application Specific Information"] == [("LIBRARY-LTO", "ABCDEF")]
    assert values["Cryptographic Usage Mask"] == [
        enums.CryptographicUsageMask.ENCRYPT.value | enums.CryptographicUsageMask.DECRYPT.value]
    (initial,) = values["Initial Date"]
    assert before - 2 <= initial <= after + 2

    # Asking by name returns those attributes only.
    _, some = client.get_attributes(uid, ["State", "Cryptographic Length"])
    assert attribute_map(some) == {"State": [enums.State.PRE_ACTIVE], "Cryptographic Length": [256]}

    with pytest.raises(pie_exceptions.KmipOperationFailure) as err:
        client.get_attributes("00000000-0000-0000-0000-000000000000")
    assert operation_failure(err) == Reason.ITEM_NOT_FOUND


def test_get_attribute_list(client):
    uid = client.create(AES, 128, name="LIST-KEY")
    names = client.get_attribute_list(uid)
    for expected in ["Unique Identifier", "Object Type", "Cryptographic Algorithm",
                     "Cryptographic Length", "State", "Initial Date", "Name",
                     "Cryptographic Usage Mask"]:
        assert expected in names, f"{expected} missing from {names}"
    assert len(names) == len(set(names)), f"duplicates in {names}"
    assert "Activation Date" not in names
    client.activate(uid)
    assert "Activation Date" in client.get_attribute_list(uid)


def test_custom_attribute_in_create_template_and_locate(client):
    # PyKMIP 0.11 has no Add Attribute, so the x- attribute rides in the Create template.
    gold = create(client, 256, attr("x-shadowkeep-tier", "gold"))
    create(client, 256, attr("x-shadowkeep-tier", "silver"))
    assert locate(client, attr("x-shadowkeep-tier", "gold")) == [gold]
    assert locate(client, attr("x-shadowkeep-tier", "bronze")) == []
    _, attrs = client.get_attributes(gold, ["x-shadowkeep-tier"])
    assert attribute_map(attrs) == {"x-shadowkeep-tier": ["gold"]}


def test_add_attribute_custom_and_name(server, client):
    # Add Attribute is built by hand (PyKMIP 0.11 lacks it).
    uid = client.create(AES, 256, name="ADD-1")

    def add(name, value):
        with raw_client(server) as raw:
            return raw.call(enums.Operation.ADD_ATTRIBUTE, w.struct_(
                w.T.REQUEST_PAYLOAD, w.text(w.T.UNIQUE_IDENTIFIER, uid), w.attribute(name, value)))

    result = add("x-vault", w.text(w.T.ATTRIBUTE_VALUE, "vault-7"))
    assert result.status == enums.ResultStatus.SUCCESS, f"{result.reason}: {result.message}"
    assert result.payload.child(w.T.UNIQUE_IDENTIFIER).value == uid
    echoed = result.payload.child(w.T.ATTRIBUTE)
    assert echoed.child(w.T.ATTRIBUTE_NAME).value == "x-vault"
    assert echoed.child(w.T.ATTRIBUTE_VALUE).value == "vault-7"
    assert locate(client, attr("x-vault", "vault-7")) == [uid]

    # A second Name is a second instance, index 1; both find the key.
    result = add("Name", w.struct_(w.T.NAME, w.text(w.T.NAME_VALUE, "ADD-1-ALIAS"),
                                   w.enum(w.T.NAME_TYPE, enums.NameType.UNINTERPRETED_TEXT_STRING)))
    assert result.status == enums.ResultStatus.SUCCESS, f"{result.reason}: {result.message}"
    index = result.payload.child(w.T.ATTRIBUTE).child(w.T.ATTRIBUTE_INDEX)
    assert index is not None and index.value == 1
    assert locate(client, attr(AT.NAME, "ADD-1-ALIAS")) == [uid]
    assert locate(client, attr(AT.NAME, "ADD-1")) == [uid]
    _, attrs = client.get_attributes(uid, ["Name"])
    assert sorted(attribute_map(attrs)["Name"]) == ["ADD-1", "ADD-1-ALIAS"]

    # State belongs to the server (KMIP: read-only attribute -> Permission Denied).
    result = add("State", w.enum(w.T.ATTRIBUTE_VALUE, enums.State.ACTIVE))
    assert (result.status, result.reason) == (enums.ResultStatus.OPERATION_FAILED, Reason.PERMISSION_DENIED)
    assert state(client, uid) == enums.State.PRE_ACTIVE


def test_modify_and_delete_attribute(client):
    uid = create(client, 256, attr(AT.NAME, "OLD-NAME"), attr("x-shelf", "A1"))
    got_uid, new = client.modify_attribute(unique_identifier=uid, attribute=attr(AT.NAME, "NEW-NAME", 0))
    assert got_uid == uid
    assert plain(new.attribute_value) == "NEW-NAME"
    assert locate(client, attr(AT.NAME, "OLD-NAME")) == []
    assert locate(client, attr(AT.NAME, "NEW-NAME")) == [uid]

    got_uid, old = client.delete_attribute(unique_identifier=uid, attribute_name="x-shelf", attribute_index=0)
    assert got_uid == uid
    assert locate(client, attr("x-shelf", "A1")) == []
    assert "x-shelf" not in client.get_attribute_list(uid)

    # (PyKMIP raises its core OperationFailure for the attribute operations.)
    with pytest.raises(core_exceptions.OperationFailure) as err:
        client.delete_attribute(unique_identifier=uid, attribute_name="x-shelf", attribute_index=0)
    assert operation_failure(err) == Reason.ITEM_NOT_FOUND


def test_tape_profile_custom_attributes_fit_and_survive_a_restart(server):
    """The OASIS Tape Library Profile asks for at least 30 custom x- attributes per object,
    with values of 255 characters or more."""
    values = {f"x-tape-{i:02d}": f"{i:02d}" + "V" * 1022 for i in range(30)}
    with make_client(server) as c:
        uid = create(c, 256, attr(AT.NAME, "PROFILE-30"),
                     *(attr(name, value) for name, value in values.items()))
    server.restart()
    with make_client(server) as c:
        _, attrs = c.get_attributes(uid, list(values))
        assert attribute_map(attrs) == {name: [value] for name, value in values.items()}
        assert locate(c, attr("x-tape-29", values["x-tape-29"])) == [uid]


def test_a_create_over_the_per_object_attribute_limits_is_refused_and_stores_nothing(client):
    many = [attr(f"x-note-{i:03d}", "N" * 4096) for i in range(100)]
    message = failed(client.proxy.create(enums.ObjectType.SYMMETRIC_KEY,
                                         aes_template(256, attr(AT.NAME, "TOO-MANY"), *many)),
                     Reason.INVALID_FIELD)
    assert "over the limit of 64" in message and "nothing was changed" in message, message
    long_name = attr("x-" + "n" * 200, "v")
    message = failed(client.proxy.create(enums.ObjectType.SYMMETRIC_KEY,
                                         aes_template(256, attr(AT.NAME, "LONG-NAME"), long_name)),
                     Reason.INVALID_FIELD)
    assert "limit of 128 bytes" in message, message
    assert locate(client, attr(AT.NAME, "TOO-MANY")) == []
    assert locate(client, attr(AT.NAME, "LONG-NAME")) == []
    assert list(client.locate() or []) == []


# ---------------------------------------------------------------- life cycle


def test_activate_revoke_destroy_life_cycle(client):
    uid = client.create(AES, 256, name="LIFE")
    before = get_key(client, uid)
    assert state(client, uid) == enums.State.PRE_ACTIVE

    client.activate(uid)
    assert state(client, uid) == enums.State.ACTIVE
    _, attrs = client.get_attributes(uid, ["Activation Date"])
    assert "Activation Date" in attribute_map(attrs)

    # An active key cannot be destroyed (KMIP 1.4, 4.21: Permission Denied) or activated again.
    failed(client.proxy.destroy(uid), Reason.PERMISSION_DENIED)
    assert state(client, uid) == enums.State.ACTIVE
    failed(client.proxy.activate(uid), Reason.PERMISSION_DENIED)

    client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
    assert state(client, uid) == enums.State.DEACTIVATED
    names = client.get_attribute_list(uid)
    assert "Deactivation Date" in names and "Revocation Reason" in names
    # A deactivated key still serves its material (to read what it protected).
    assert get_key(client, uid).fingerprint == before.fingerprint

    client.destroy(uid)
    assert state(client, uid) == enums.State.DESTROYED
    with pytest.raises(pie_exceptions.KmipOperationFailure) as err:
        client.get(uid)
    assert operation_failure(err) == Reason.ITEM_NOT_FOUND


def test_pre_active_key_can_be_destroyed_and_unknown_ids_are_not_found(client):
    uid = client.create(AES, 128)
    client.destroy(uid)
    with pytest.raises(pie_exceptions.KmipOperationFailure) as err:
        client.get(uid)
    assert operation_failure(err) == Reason.ITEM_NOT_FOUND
    failed(client.proxy.activate("00000000-0000-0000-0000-000000000000"), Reason.ITEM_NOT_FOUND)
    failed(client.proxy.destroy("no-such-key"), Reason.ITEM_NOT_FOUND)


# ---------------------------------------------------------------- tape library profile


def test_tape_library_profile_flow(client):
    """OASIS KMIP Tape Library Profile: the library creates a key for a cartridge, tags it
    with its Key-Associated Data in Application Specific Information (namespace
    LIBRARY-LTO, data = the KAD in upper-case hex) and a Name (the barcode); to read the
    cartridge back it locates the key by Object Type + Application Specific Information and
    Gets it."""
    Q = enums.QueryFunction
    namespaces = ok(client.proxy.query(query_functions=[Q.QUERY_APPLICATION_NAMESPACES])).application_namespaces
    assert "LIBRARY-LTO" in [str(getattr(n, "value", n)) for n in namespaces]

    barcode = "ABC123L6"
    kad = bytes.fromhex("0001") + barcode.encode() + os.urandom(8)
    data = kad.hex().upper()
    # Other cartridges in the library.
    for other in ("ABC124L6", "ABC125L6"):
        create(client, 256, attr(AT.NAME, other),
               asi("LIBRARY-LTO", (bytes.fromhex("0001") + other.encode()).hex().upper()))

    uid = create(client, 256, attr(AT.NAME, barcode), asi("LIBRARY-LTO", data))
    written_with = get_key(client, uid)
    assert (written_with.algorithm, written_with.length, written_with.nbytes) == (AES, 256, 32)

    found = locate(client, attr(AT.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY), asi("LIBRARY-LTO", data))
    assert found == [uid]
    read_with = get_key(client, found[0])
    assert read_with.fingerprint == written_with.fingerprint

    assert locate(client, attr(AT.NAME, barcode)) == [uid]
    _, attrs = client.get_attributes(uid, ["Name", "Application Specific Information"])
    assert attribute_map(attrs) == {"Name": [barcode],
                                    "Application Specific Information": [("LIBRARY-LTO", data)]}


# ---------------------------------------------------------------- durability


def test_keys_survive_a_graceful_restart(server):
    keys = {}
    registered = os.urandom(32)
    want_registered = fingerprint(registered)
    with make_client(server) as c:
        for bits in (128, 192, 256):
            uid = c.create(AES, bits, name=f"DUR-{bits}")
            keys[uid] = get_key(c, uid)
        reg = c.register(pie_objects.SymmetricKey(AES, 256, registered, name="DUR-REG"))
        keys[reg] = get_key(c, reg)
        c.activate(reg)
        tagged = create(c, 256, asi("LIBRARY-LTO", "D00D"), attr("x-dur", "yes"))
        keys[tagged] = get_key(c, tagged)
    assert keys[reg].fingerprint == want_registered

    old_port = server.port
    server.restart()  # SIGTERM, must exit 0, then the same data directory again
    assert server.port is not None and server.runs == 2, old_port

    with make_client(server) as c:
        for uid, before in keys.items():
            assert get_key(c, uid) == before, f"key {uid} changed across the restart"
        assert state(c, reg) == enums.State.ACTIVE
        assert locate(c, attr(AT.NAME, "DUR-192")) == [u for u, k in keys.items() if k.length == 192]
        assert locate(c, asi("LIBRARY-LTO", "D00D")) == [tagged]
        assert locate(c, attr("x-dur", "yes")) == [tagged]


def test_acknowledged_creates_survive_sigkill(server):
    """SIGKILL lands in the middle of a stream of Creates from one client: every key whose
    Create was answered with success must be there after a restart, with the same material."""
    acked: dict[str, str | None] = {}  # uid -> fingerprint, when a Get got in before the kill
    killed = threading.Event()
    kill_code: list[int] = []

    threshold = random.randint(30, 120)

    def killer():
        deadline = time.monotonic() + 20
        while len(acked) < threshold and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(random.uniform(0.0, 0.05))
        kill_code.append(server.kill())
        killed.set()

    c = make_client(server)
    c.open()
    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    error = None
    try:
        for i in range(100_000):
            try:
                uid = c.create(AES, 256, name=f"STREAM-{i:05d}")
            except Exception as e:  # the connection dies with the server
                error = e
                break
            acked[uid] = None
            try:
                acked[uid] = get_key(c, uid).fingerprint
            except Exception as e:
                error = e
                break
    finally:
        thread.join(timeout=30)
        c.close()
    assert killed.is_set() and kill_code == [-signal.SIGKILL], kill_code
    assert error is not None, "the stream ended without the server dying"
    assert len(acked) >= threshold, f"only {len(acked)} creates before the kill"

    server.start()
    with make_client(server) as c:
        for uid, fp in acked.items():
            key = get_key(c, uid)  # raises ITEM_NOT_FOUND if an acknowledged key was lost
            assert (key.length, key.nbytes) == (256, 32)
            if fp is not None:
                assert key.fingerprint == fp, f"key {uid} has different material after the crash"
        # And the server is fully usable afterwards.
        uid = c.create(AES, 256, name="AFTER-CRASH")
        assert locate(c, attr(AT.NAME, "AFTER-CRASH")) == [uid]


# ---------------------------------------------------------------- drive table


def test_drive_table_refuses_a_client_it_does_not_list(server, servers, tmp_path):
    config = dev_config(server.certs_dir, tmp_path / "store-refusing", {
        "acceptUnknown": False,
        "drives": [{"serial": "1013000123", "certificateIdentity": "some-other-library"}],
    })
    refusing = servers.from_config(config, server.certs_dir)
    with make_client(refusing) as c:
        failed(c.proxy.create(enums.ObjectType.SYMMETRIC_KEY, aes_template(256)), Reason.PERMISSION_DENIED)
        failed(c.proxy.locate(attributes=[attr(AT.OBJECT_TYPE, enums.ObjectType.SYMMETRIC_KEY)]),
               Reason.PERMISSION_DENIED)
        failed(c.proxy.query(query_functions=[enums.QueryFunction.QUERY_OBJECTS]), Reason.PERMISSION_DENIED)
    refusals = [line for line in refusing.logs()
                if "refused" in str(line.get("fields", {}).get("message", "")).lower()]
    assert refusals, f"no log line about the refusal in:\n{refusing.stderr_text()}"
    assert "shadowkeep-dev-client" in str(refusals[0]["fields"]), refusals[0]
    assert refusals[0].get("level") in ("WARN", "ERROR"), refusals[0]


def test_drive_table_admits_a_listed_certificate_identity(server, servers, tmp_path):
    config = dev_config(server.certs_dir, tmp_path / "store-admitting", {
        "acceptUnknown": False,
        "drives": [{"serial": "1013000123", "certificateIdentity": "some-other-library"},
                   {"serial": "1013000124", "certificateIdentity": "shadowkeep-dev-client"}],
    })
    admitting = servers.from_config(config, server.certs_dir)
    with make_client(admitting) as c:
        uid = create(c, 256, attr(AT.NAME, "ADMITTED"))
        key = get_key(c, uid)
        assert (key.algorithm, key.length) == (AES, 256)
        assert locate(c, attr(AT.NAME, "ADMITTED")) == [uid]
        vendor = ok(c.proxy.query(query_functions=[enums.QueryFunction.QUERY_SERVER_INFORMATION]))
        assert "tape-eu1" in str(getattr(vendor.vendor_identification, "value", vendor.vendor_identification))
    assert not [line for line in admitting.logs()
                if "refused" in str(line.get("fields", {}).get("message", "")).lower()]


# ---------------------------------------------------------------- bad clients


@pytest.mark.parametrize("case", ["no-cert-tls1.2", "no-cert-tls1.3", "foreign-ca-cert"])
def test_client_without_a_valid_certificate_is_refused(server, servers, tmp_path, case):
    ctx = ssl.create_default_context(cafile=server.ca)
    if case == "no-cert-tls1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif case == "no-cert-tls1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        # A certificate from another CA: another dev server's client certificate.
        other = servers.dev(tmp_path / "other-ca")
        ctx.load_cert_chain(other.cert, other.key)
    request = w.request(enums.Operation.DISCOVER_VERSIONS, w.struct_(w.T.REQUEST_PAYLOAD))
    answered = b""
    refused_by: BaseException | None = None
    raw = socket.create_connection((server.host, server.port), timeout=5)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=server.host)
        # TLS 1.3: the client's handshake completes before the server judges the client's
        # (missing) certificate; the refusal arrives as an alert or a close.
        tls.sendall(request)
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            answered += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        refused_by = e
    except TimeoutError:
        pytest.fail("the server neither refused the connection nor closed it within 5 s")
    finally:
        raw.close()
    assert answered == b"", f"the server answered {len(answered)} bytes to an unauthenticated client"
    print(f"refused with: {refused_by!r}")

    # The server keeps serving good clients.
    with make_client(server) as c:
        uid = c.create(AES, 256)
        assert get_key(c, uid).nbytes == 32
