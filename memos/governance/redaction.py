"""Redaction before anything is stored: emails, phone numbers, card numbers, IBANs and custom patterns.

Card numbers must pass the Luhn check and IBANs the ISO 13616 mod-97 check, so ordinary numbers (order
ids, dates, amounts) survive. Phone numbers need 7 to 15 digits in a phone-like shape (a leading `+`,
or groups separated by spaces, dots, dashes or brackets); dates and times are left alone. The order
is: custom patterns, email, IBAN, card, phone (the most specific first, so a card number is not
mistaken for a phone number).

`Redactor.from_policy(policy.memory.redaction).redact(text)` is applied to every text before it is
stored (write-back and the memory API).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from memos.governance.policy import RedactionPolicy

EMAIL_TOKEN = "[EMAIL]"
PHONE_TOKEN = "[PHONE]"
CARD_TOKEN = "[CARD]"
IBAN_TOKEN = "[IBAN]"

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)
# Two letters, two check digits, then 11-30 alphanumerics, optionally grouped by single spaces.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b", re.IGNORECASE)
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
# Phone shapes: +CC..., (0xx) ..., or at least three digit groups; checked for 7-15 digits afterwards.
_PHONE = re.compile(
    r"(?<![\w+])"
    r"(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]?\d{1,4}){1,5}"  # international
    r"|\(\d{2,5}\)[\s.-]?\d{2,4}(?:[\s.-]?\d{2,4}){1,3}"  # (area) local
    r"|\d{2,5}[\s.-]\d{2,4}[\s.-]\d{2,5}(?:[\s.-]\d{2,4})?"  # grouped
    r"|\d{10,11}"  # national number written without separators
    r")"
    r"(?![\w:])"
)
_DATE_PREFIX = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})(?!\d)")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# ISO 13616 lengths of the countries that issue IBANs.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(candidate: str) -> bool:
    compact = candidate.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not compact.isalnum():
        return False
    # Only countries that issue IBANs, at their length, with a mostly numeric account part (every
    # country's is): a code followed by words ("TH851 leaves from") passes mod-97 one time in 97.
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    account = compact[4:]
    if sum(ch.isdigit() for ch in account) * 2 < len(account):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _sub_email(match: re.Match[str]) -> str:
    return EMAIL_TOKEN


def _sub_iban(match: re.Match[str]) -> str:
    text = match.group(0)
    if iban_ok(text):
        return IBAN_TOKEN
    # A longer match may swallow trailing words; try the longest valid prefix on word boundaries.
    parts = text.split(" ")
    for end in range(len(parts) - 1, 0, -1):
        prefix = " ".join(parts[:end])
        if iban_ok(prefix):
            return IBAN_TOKEN + text[len(prefix) :]
    return text


def _sub_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return CARD_TOKEN if 13 <= len(digits) <= 19 and luhn_ok(digits) else match.group(0)


def _sub_phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = re.sub(r"\D", "", text)
    if not 7 <= len(digits) <= 15:
        return text
    if not text.startswith("+") and _DATE_PREFIX.match(text):
        return text
    return PHONE_TOKEN


_BUILTINS: dict[str, tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = {
    "email": (_EMAIL, _sub_email),
    "iban": (_IBAN, _sub_iban),
    "card": (_CARD, _sub_card),
    "phone": (_PHONE, _sub_phone),
}
_BUILTIN_ORDER = ("email", "iban", "card", "phone")


@dataclass(frozen=True)
class Redactor:
    """Replaces sensitive spans in text. Immutable and thread-safe; build one per policy."""

    custom: tuple[tuple[re.Pattern[str], str], ...] = ()
    builtin: tuple[str, ...] = _BUILTIN_ORDER

    @classmethod
    def from_policy(cls, policy: RedactionPolicy | None) -> Redactor:
        if policy is None:
            return _cached((), _BUILTIN_ORDER)
        custom = tuple((rule.pattern, rule.replacement) for rule in policy.custom)
        builtin = tuple(name for name in _BUILTIN_ORDER if name in set(policy.builtin))
        return _cached(custom, builtin)

    @classmethod
    def none(cls) -> Redactor:
        return cls((), ())

    def redact(self, text: str) -> str:
        if not text:
            return text
        for pattern, replacement in self.custom:
            text = pattern.sub(replacement, text)
        for name in self.builtin:
            pattern, sub = _BUILTINS[name]
            text = pattern.sub(sub, text)
        return text

    def redact_all(self, texts: Sequence[str]) -> list[str]:
        return [self.redact(t) for t in texts]


@lru_cache(maxsize=256)
def _cached(custom: tuple[tuple[str, str], ...], builtin: tuple[str, ...]) -> Redactor:
    compiled = tuple((re.compile(pattern), _literal(replacement)) for pattern, replacement in custom)
    return Redactor(compiled, builtin)


def _literal(replacement: str) -> str:
    # Replacements are literal text (no group references), so a policy cannot re-insert what it matched.
    return replacement.replace("\\", "\\\\")
