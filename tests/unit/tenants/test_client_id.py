import pytest

from authz.errors import ClientIdNotFound
from authz.tenants.client_id import client_id_from_claims, is_valid_client_id, validate_client_id

CLAIMS = ("clientId", "firebase.tenant")


@pytest.mark.parametrize("value", ["acme", "tenant-1", "a.b_c-d", "A" * 128, "7"])
def test_valid_client_ids(value):
    assert is_valid_client_id(value)


@pytest.mark.parametrize(
    "value",
    ["", ".", "..", "../other", "a/b", "a%2Fb", "a\x00b", "a..b", "-x", ".hidden", "a b",
     "a\\b", "A" * 129, "ténant", "a\nb"],
)
def test_path_tricks_are_not_client_ids(value):
    assert not is_valid_client_id(value)
    with pytest.raises(ValueError, match="not a valid client id"):
        validate_client_id(value)


def test_first_configured_claim_wins():
    assert client_id_from_claims({"clientId": "a", "firebase": {"tenant": "b"}}, CLAIMS) == "a"
    assert client_id_from_claims({"firebase": {"tenant": "b"}}, CLAIMS) == "b"


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"firebase": {}},
        {"firebase": "tenant"},
        {"clientId": 7},
        {"clientId": ["a"]},
        {"clientId": {"id": "a"}},
        {"clientId": ""},
        {"clientId": "../other"},
        # An invalid first claim must not fall through to a weaker one.
        {"clientId": "a/b", "firebase": {"tenant": "fine"}},
        {"clientId": True},
    ],
)
def test_no_usable_client_id(claims):
    with pytest.raises(ClientIdNotFound):
        client_id_from_claims(claims, CLAIMS)
