"""Numbers written as digits -> the words a speaker says, per language (en, de, es, fr).

Whisper writes most numbers as digits ("25", "3,5 %", "1990"), but a TTS training row must hold
what was spoken, and WER must not count "25" against "fünfundzwanzig". `verbalize_numbers`
spells out, in the given language:

- whole numbers below a trillion, with the language's digit grouping (en "1,000"; de and es
  "1.000"; fr "1 000", also with a no-break space);
- decimals with the language's decimal mark (en "3.5": "three point five"; de/es/fr "3,5": "drei
  Komma fünf", "tres coma cinco", "trois virgule cinq"), the digits after the mark one by one;
- a percent sign after a number ("percent", "Prozent", "por ciento", "pour cent");
- in English and German, four-digit numbers from 1100 to 1999 as years are read ("nineteen
  ninety", "neunzehnhundertneunzig"); Spanish and French read years as plain numbers.

Ordinals ("3." in German, "1st"), currencies, dates and times are left as written: their reading
depends on context a rule cannot see. Other languages keep their digits (add a speller here).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_EN_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
            "sixteen seventeen eighteen nineteen").split()
_EN_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_DE_ONES = ("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf dreizehn vierzehn fünfzehn "
            "sechzehn siebzehn achtzehn neunzehn").split()
_DE_TENS = "_ _ zwanzig dreißig vierzig fünfzig sechzig siebzig achtzig neunzig".split()
_ES_ONES = ("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece catorce quince dieciséis "
            "diecisiete dieciocho diecinueve veinte veintiuno veintidós veintitrés veinticuatro veinticinco "
            "veintiséis veintisiete veintiocho veintinueve").split()
_ES_TENS = "_ _ veinte treinta cuarenta cincuenta sesenta setenta ochenta noventa".split()
_ES_HUNDREDS = ("_ ciento doscientos trescientos cuatrocientos quinientos seiscientos setecientos ochocientos "
                "novecientos").split()
_FR_ONES = ("zéro un deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize "
            "dix-sept dix-huit dix-neuf").split()
_FR_TENS = "_ _ vingt trente quarante cinquante soixante".split()


def _en(n: int) -> str:
    if n < 20:
        return _EN_ONES[n]
    if n < 100:
        return _EN_TENS[n // 10] + ("" if n % 10 == 0 else "-" + _EN_ONES[n % 10])
    if n < 1000:
        return _EN_ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + _en(n % 100))
    for value, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= value:
            rest = n % value
            return _en(n // value) + " " + name + ("" if rest == 0 else " " + _en(rest))
    raise AssertionError(n)


def _de_below_million(n: int, final: bool) -> str:
    """German numbers below a million are one word; a final 1 is "eins" (101: hunderteins)."""
    if n == 0:
        return ""
    if n < 20:
        return "eins" if n == 1 and final else ("ein" if n == 1 else _DE_ONES[n])
    if n < 100:
        ones, tens = n % 10, _DE_TENS[n // 10]
        return tens if ones == 0 else ("ein" if ones == 1 else _DE_ONES[ones]) + "und" + tens
    if n < 1000:
        head = "" if n // 100 == 1 else _de_below_million(n // 100, False)
        return head + "hundert" + _de_below_million(n % 100, final)
    head = "" if n // 1000 == 1 else _de_below_million(n // 1000, False)
    return head + "tausend" + _de_below_million(n % 1000, final)


def _de(n: int) -> str:
    if n == 0:
        return _DE_ONES[0]
    for value, one, many in ((10**9, "eine Milliarde", "Milliarden"), (10**6, "eine Million", "Millionen")):
        if n >= value:
            count, rest = divmod(n, value)
            head = one if count == 1 else f"{_de(count)} {many}"
            return head + ("" if rest == 0 else " " + _de(rest))
    return _de_below_million(n, True)


def _es(n: int) -> str:
    if n < 30:
        return _ES_ONES[n]
    if n < 100:
        return _ES_TENS[n // 10] + ("" if n % 10 == 0 else " y " + _ES_ONES[n % 10])
    if n < 1000:
        if n == 100:
            return "cien"
        return _ES_HUNDREDS[n // 100] + ("" if n % 100 == 0 else " " + _es(n % 100))
    for value, one, many in ((10**9, "mil millones", "mil millones"), (10**6, "un millón", "millones")):
        if n >= value:
            count, rest = divmod(n, value)
            head = one if count == 1 else f"{_apocope(_es(count))} {many}"
            return head + ("" if rest == 0 else " " + _es(rest))
    count, rest = divmod(n, 1000)
    head = "mil" if count == 1 else _apocope(_es(count)) + " mil"
    return head + ("" if rest == 0 else " " + _es(rest))


def _apocope(words: str) -> str:
    """'uno' before a noun (mil, millones) is 'un'; 'veintiuno' is 'veintiún'."""
    if words.endswith("veintiuno"):
        return words[: -len("uno")] + "ún"
    return words[: -len("uno")] + "un" if words.endswith("uno") else words


def _fr_below_100(n: int) -> str:
    if n < 20:
        return _FR_ONES[n]
    if n < 70:
        tens, ones = divmod(n, 10)
        if ones == 0:
            return _FR_TENS[tens]
        return _FR_TENS[tens] + (" et un" if ones == 1 else "-" + _FR_ONES[ones])
    if n < 80:  # soixante-dix ... soixante-dix-neuf, with "soixante et onze"
        return "soixante et onze" if n == 71 else "soixante-" + _FR_ONES[n - 60]
    if n == 80:
        return "quatre-vingts"
    return "quatre-vingt-" + _FR_ONES[n - 80]


def _fr(n: int) -> str:
    if n < 100:
        return _fr_below_100(n)
    if n < 1000:
        count, rest = divmod(n, 100)
        head = "cent" if count == 1 else _FR_ONES[count] + (" cents" if rest == 0 else " cent")
        return head + ("" if rest == 0 else " " + _fr_below_100(rest))
    for value, name in ((10**9, "milliard"), (10**6, "million")):
        if n >= value:
            count, rest = divmod(n, value)
            head = f"{_fr(count)} {name}" + ("s" if count > 1 else "")
            return head + ("" if rest == 0 else " " + _fr(rest))
    count, rest = divmod(n, 1000)
    head = "mille" if count == 1 else _fr(count).removesuffix("s") + " mille"  # "deux cent mille"
    return head + ("" if rest == 0 else " " + _fr(rest))


def _en_year(n: int) -> str:
    high, low = divmod(n, 100)
    return _en(high) + (" hundred" if low == 0 else (" oh " + _en(low) if low < 10 else " " + _en(low)))


def _de_year(n: int) -> str:
    return _de_below_million(n // 100, False) + "hundert" + _de_below_million(n % 100, True)


class _Language:
    def __init__(
        self, cardinal: Callable[[int], str], group: str, decimal: str, point: str, percent: str,
        year: Callable[[int], str] | None = None,
    ) -> None:
        self.cardinal, self.point, self.percent, self.year = cardinal, point, percent, year
        groups = "".join(re.escape(g) for g in group)
        self.pattern = re.compile(
            rf"(?<![\w.,])(?P<int>\d{{1,3}}(?:[{groups}]\d{{3}})+|\d+)(?:{re.escape(decimal)}(?P<frac>\d+))?"
            rf"(?P<pct>\s?%)?(?![\w])"
        )

    def spell(self, match: re.Match) -> str:
        digits = re.sub(r"\D", "", match["int"])
        n = int(digits)
        if n >= 10**12:
            return match[0]
        plain = match["int"] == digits and match["frac"] is None and match["pct"] is None
        if self.year is not None and plain and len(digits) == 4 and 1100 <= n <= 1999:
            words = self.year(n)
        else:
            words = self.cardinal(n)
        if match["frac"] is not None:
            words += f" {self.point} " + " ".join(self.cardinal(int(d)) for d in match["frac"])
        if match["pct"] is not None:
            words += f" {self.percent}"
        return words


_LANGUAGES = {
    "en": _Language(_en, ",", ".", "point", "percent", _en_year),
    "de": _Language(_de, ".", ",", "Komma", "Prozent", _de_year),
    "es": _Language(_es, ".", ",", "coma", "por ciento"),
    "fr": _Language(_fr, " \u00a0\u202f", ",", "virgule", "pour cent"),
}
NUMBER_LANGUAGES = tuple(_LANGUAGES)
"""Languages whose numbers `verbalize_numbers` spells out."""


def verbalize_numbers(text: str, language: str | None) -> str:
    """`text` with its numbers spelled out in `language` (unchanged for other languages or None)."""
    spec = _LANGUAGES.get(language or "")
    if spec is None:
        return text
    return spec.pattern.sub(spec.spell, text)
