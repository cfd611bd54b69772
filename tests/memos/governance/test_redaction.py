import pytest

from memos.governance.policy import RedactionPolicy, RedactionRule
from memos.governance.redaction import Redactor, iban_ok, luhn_ok

R = Redactor.from_policy(RedactionPolicy())


@pytest.mark.parametrize(
    "text",
    [
        "write to jane.doe+tag@example.co.uk please",
        "call +44 20 7946 0958",
        "call (555) 123-4567",
        "call 555-123-4567",
        "call +1-202-555-0143",
        "card 4111 1111 1111 1111",
        "card 4111-1111-1111-1111",
        "card 378282246310005",
        "iban DE89 3704 0044 0532 0130 00",
        "iban GB82WEST12345698765432",
    ],
)
def test_sensitive_values_are_replaced(text):
    out = R.redact(text)
    assert out != text
    assert any(tok in out for tok in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"))


@pytest.mark.parametrize(
    "text",
    [
        "meeting on 2024-01-15 at 10:30",
        "order 12345 shipped",
        "the total was 1,234.56 EUR",
        "version 3.11.4 is out",
        "not a card 4111 1111 1111 1112",
        "not an iban DE00 3704 0044 0532 0130 00",
        "I was born in 1987 and moved in 2019",
    ],
)
def test_ordinary_text_survives(text):
    assert R.redact(text) == text


def test_card_kinds():
    assert R.redact("4111111111111111") == "[CARD]"
    assert "[CARD]" in R.redact("pay with 5500 0000 0000 0004 now")
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


def test_iban_check():
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("DE89370400440532013001")
    assert "[IBAN]" in R.redact("my iban is FR14 2004 1010 0505 0001 3M02 606 thanks")
    assert iban_ok("MT84MALT011000012345MTLCAST001S")  # letters in the account part, as Malta has


def test_codes_followed_by_words_are_not_ibans() -> None:
    # Found by the distinct-facts property test: "TH851 leaves from" passes mod-97 (1 in 97 do), but
    # TH issues no IBANs; a listed country followed by words fails on length or on the letters.
    for text in ("Flight TH851 leaves from gate B12.", "Flight GB12 leaves from the north gate B12 today."):
        assert R.redact(text) == text
    assert not iban_ok("TH851LEAVESFROM")


def test_custom_and_builtin_selection():
    policy = RedactionPolicy(
        builtin=["email"], custom=[RedactionRule(name="emp", pattern=r"EMP-\d{6}", replacement="[EMPLOYEE]")]
    )
    r = Redactor.from_policy(policy)
    assert (
        r.redact("EMP-123456 mailed a@b.io from +44 20 7946 0958")
        == "[EMPLOYEE] mailed [EMAIL] from +44 20 7946 0958"
    )


def test_replacement_is_literal():
    r = Redactor.from_policy(
        RedactionPolicy(builtin=[], custom=[RedactionRule(name="x", pattern=r"(sec)ret", replacement=r"\1")])
    )
    assert r.redact("secret") == r"\1"


def test_none_redactor():
    assert Redactor.none().redact("a@b.io") == "a@b.io"
