"""Elasticsearch's ``english`` analyzer and Lucene BM25 in Python, without a server.

What beir's ``BM25Search`` runs in Elasticsearch, piece by piece:

- ``english`` analyzer (Lucene ``EnglishAnalyzer``): standard tokenizer (Unicode
  word boundaries, UAX #29), ``EnglishPossessiveFilter`` (trailing ``'s``),
  ``LowerCaseFilter``, ``StopFilter`` with ``ENGLISH_STOP_WORDS_SET`` (33 words),
  ``PorterStemFilter`` (Martin Porter's reference implementation, with its
  "departures" from the 1980 paper: ``-bli`` -> ``-ble``, ``-logi`` -> ``-log``,
  and words of one or two letters left alone).
- ``BM25Similarity`` (Lucene 8+): ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``,
  ``score = idf - idf / (1 + tf / (k1 * (1 - b + b * dl / avgdl)))`` in float32,
  with ``N`` and ``avgdl`` per field over documents that have the field, and the
  document length ``dl`` stored lossily in one byte (``SmallFloat.intToByte4``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache

import numpy as np

try:  # the `regex` package implements Unicode default word boundaries (UAX #29)
    import regex as _re

    _WORD_BOUNDARY = _re.compile(r"\b", flags=_re.WORD | _re.V1)
    HAS_WORD_BOUNDARIES = True
except ImportError:  # pragma: no cover - transformers depends on `regex`
    import re as _re

    _WORD_BOUNDARY = None
    HAS_WORD_BOUNDARIES = False

# org.apache.lucene.analysis.en.EnglishAnalyzer.ENGLISH_STOP_WORDS_SET
ENGLISH_STOP_WORDS = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    )
)

MAX_TOKEN_LENGTH = 255  # StandardTokenizer splits longer tokens into chunks of this size

# A segment between word boundaries becomes a token when it holds a letter or a
# digit (StandardTokenizer's ALPHANUM, NUM, IDEOGRAPHIC, ... types); runs of
# spaces, punctuation and symbols are dropped.
_TOKEN_CHAR = _re.compile(r"[\p{L}\p{Nd}\p{Nl}]" if HAS_WORD_BOUNDARIES else r"[^\W_]")
_FALLBACK_WORD = _re.compile(r"\w+(?:['’.,]\w+)*")


def standard_tokenize(text: str) -> list[str]:
    """Lucene's StandardTokenizer, approximated with Unicode word boundaries.

    Keeps ``don't``, ``3.14``, ``1,000``, ``U.S.A`` and ``foo_bar`` whole; splits
    at hyphens, slashes and other punctuation; every CJK ideograph is a token.
    """
    if HAS_WORD_BOUNDARIES:
        segments = _WORD_BOUNDARY.split(text)
        tokens = [s for s in segments if s and _TOKEN_CHAR.search(s)]
    else:  # pragma: no cover
        tokens = _FALLBACK_WORD.findall(text)
    if any(len(t) > MAX_TOKEN_LENGTH for t in tokens):
        tokens = [
            t[i : i + MAX_TOKEN_LENGTH] for t in tokens for i in range(0, len(t), MAX_TOKEN_LENGTH)
        ]
    return tokens


def strip_possessive(token: str) -> str:
    """EnglishPossessiveFilter: drop a trailing ``'s`` (also with ’ or ＇, and ``'S``)."""
    if len(token) >= 2 and token[-1] in "sS" and token[-2] in "'\u2019\uff07":
        return token[:-2]
    return token


# --------------------------------------------------------------------------------------
# Porter stemmer, as org.apache.lucene.analysis.en.PorterStemmer implements it.


class _Porter:
    __slots__ = ("b", "j", "k")

    def __init__(self, word: str):
        self.b = list(word)
        self.k = len(word) - 1
        self.j = 0

    def cons(self, i: int) -> bool:
        ch = self.b[i]
        if ch in "aeiou":
            return False
        if ch == "y":
            return True if i == 0 else not self.cons(i - 1)
        return True

    def m(self) -> int:
        """The number of consonant sequences VC in b[0..j]."""
        n, i, j = 0, 0, self.j
        while True:
            if i > j:
                return n
            if not self.cons(i):
                break
            i += 1
        i += 1
        while True:
            while True:
                if i > j:
                    return n
                if self.cons(i):
                    break
                i += 1
            i += 1
            n += 1
            while True:
                if i > j:
                    return n
                if not self.cons(i):
                    break
                i += 1
            i += 1

    def vowel_in_stem(self) -> bool:
        return any(not self.cons(i) for i in range(self.j + 1))

    def doublec(self, j: int) -> bool:
        return j >= 1 and self.b[j] == self.b[j - 1] and self.cons(j)

    def cvc(self, i: int) -> bool:
        if i < 2 or not self.cons(i) or self.cons(i - 1) or not self.cons(i - 2):
            return False
        return self.b[i] not in "wxy"

    def ends(self, s: str) -> bool:
        n = len(s)
        o = self.k - n + 1
        if o < 0 or "".join(self.b[o : self.k + 1]) != s:
            return False
        self.j = self.k - n
        return True

    def setto(self, s: str) -> None:
        o = self.j + 1
        self.b[o : o + len(s)] = list(s)
        self.k = self.j + len(s)

    def r(self, s: str) -> None:
        if self.m() > 0:
            self.setto(s)

    def step1(self) -> None:
        b = self.b
        if b[self.k] == "s":
            if self.ends("sses"):
                self.k -= 2
            elif self.ends("ies"):
                self.setto("i")
            elif b[self.k - 1] != "s":
                self.k -= 1
        if self.ends("eed"):
            if self.m() > 0:
                self.k -= 1
        elif (self.ends("ed") or self.ends("ing")) and self.vowel_in_stem():
            self.k = self.j
            if self.ends("at"):
                self.setto("ate")
            elif self.ends("bl"):
                self.setto("ble")
            elif self.ends("iz"):
                self.setto("ize")
            elif self.doublec(self.k):
                if self.b[self.k] not in "lsz":
                    self.k -= 1
            elif self.m() == 1 and self.cvc(self.k):
                self.setto("e")

    def step2(self) -> None:
        if self.ends("y") and self.vowel_in_stem():
            self.b[self.k] = "i"

    _STEP3 = {
        "a": (("ational", "ate"), ("tional", "tion")),
        "c": (("enci", "ence"), ("anci", "ance")),
        "e": (("izer", "ize"),),
        "l": (("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"), ("ousli", "ous")),
        "o": (("ization", "ize"), ("ation", "ate"), ("ator", "ate")),
        "s": (("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous")),
        "t": (("aliti", "al"), ("iviti", "ive"), ("biliti", "ble")),
        "g": (("logi", "log"),),
    }
    _STEP4 = {
        "e": (("icate", "ic"), ("ative", ""), ("alize", "al")),
        "i": (("iciti", "ic"),),
        "l": (("ical", "ic"), ("ful", "")),
        "s": (("ness", ""),),
    }
    _STEP5 = {
        "a": ("al",),
        "c": ("ance", "ence"),
        "e": ("er",),
        "i": ("ic",),
        "l": ("able", "ible"),
        "n": ("ant", "ement", "ment", "ent"),
        "s": ("ism",),
        "t": ("ate", "iti"),
        "u": ("ous",),
        "v": ("ive",),
        "z": ("ize",),
    }

    def _replace(self, rules) -> None:
        for suffix, repl in rules:
            if self.ends(suffix):
                self.r(repl)
                return

    def step3(self) -> None:
        if self.k == 0:
            return
        self._replace(self._STEP3.get(self.b[self.k - 1], ()))

    def step4(self) -> None:
        self._replace(self._STEP4.get(self.b[self.k], ()))

    def step5(self) -> None:
        if self.k == 0:
            return
        ch = self.b[self.k - 1]
        if ch == "o":
            if not (
                (self.ends("ion") and self.j >= 0 and self.b[self.j] in "st") or self.ends("ou")
            ):
                return
        elif not any(self.ends(s) for s in self._STEP5.get(ch, ())):
            return
        if self.m() > 1:
            self.k = self.j

    def step6(self) -> None:
        self.j = self.k
        if self.b[self.k] == "e":
            a = self.m()
            if a > 1 or (a == 1 and not self.cvc(self.k - 1)):
                self.k -= 1
        if self.b[self.k] == "l" and self.doublec(self.k) and self.m() > 1:
            self.k -= 1

    def stem(self) -> str:
        if self.k > 1:  # words of one or two letters are left alone
            self.step1()
            self.step2()
            self.step3()
            self.step4()
            self.step5()
            self.step6()
        return "".join(self.b[: self.k + 1])


@lru_cache(maxsize=1 << 20)
def porter_stem(word: str) -> str:
    """Lucene's PorterStemmer on one lowercased word."""
    return _Porter(word).stem()


# --------------------------------------------------------------------------------------


class Analyzer:
    """Text -> terms: standard tokenizer, [possessive], lowercase, [stop words], [stemmer]."""

    _CACHE_LIMIT = 1 << 20

    def __init__(
        self, stopwords: Iterable[str] | None, stem: Callable[[str], str] | None, possessive: bool
    ):
        self.stopwords = frozenset(stopwords or ())
        self.stem = stem
        self.possessive = possessive
        self._segments: dict[str, tuple[str, ...]] = {}

    def term(self, token: str) -> str | None:
        """One token's term, or None for a stop word."""
        t = strip_possessive(token) if self.possessive else token
        t = t.lower()
        if not t or t in self.stopwords:
            return None
        return self.stem(t) if self.stem is not None else t

    def _segment_terms(self, segment: str) -> tuple[str, ...]:
        terms = (self.term(tok) for tok in standard_tokenize(segment))
        return tuple(t for t in terms if t is not None)

    def __call__(self, text: str) -> list[str]:
        if not HAS_WORD_BOUNDARIES:  # pragma: no cover
            terms = (self.term(tok) for tok in standard_tokenize(text))
            return [t for t in terms if t is not None]
        cache = self._segments
        if len(cache) > self._CACHE_LIMIT:
            cache.clear()
        out: list[str] = []
        for segment in _WORD_BOUNDARY.split(text):
            terms = cache.get(segment)
            if terms is None:
                terms = cache[segment] = self._segment_terms(segment)
            if terms:
                out.extend(terms)
        return out


def english_analyzer(stopwords: bool = True, stemming: bool = True) -> Analyzer:
    """Elasticsearch's ``english`` analyzer (Lucene EnglishAnalyzer)."""
    return Analyzer(
        ENGLISH_STOP_WORDS if stopwords else None,
        porter_stem if stemming else None,
        possessive=True,
    )


# --------------------------------------------------------------------------------------
# Lucene's lossy one-byte document length (org.apache.lucene.util.SmallFloat).


def _long_to_int4(i: int) -> int:
    num_bits = i.bit_length()
    if num_bits < 4:
        return i
    shift = num_bits - 4
    encoded = (i >> shift) & 0x07
    return encoded | ((shift + 1) << 3)


def _int4_to_long(i: int) -> int:
    bits = i & 0x07
    shift = (i >> 3) - 1
    return bits if shift == -1 else (bits | 0x08) << shift


_NUM_FREE_VALUES = 255 - _long_to_int4(2**31 - 1)  # 24


def int_to_byte4(i: int) -> int:
    """SmallFloat.intToByte4: a field length as Lucene stores it in the norm byte."""
    return i if i < _NUM_FREE_VALUES else _NUM_FREE_VALUES + _long_to_int4(i - _NUM_FREE_VALUES)


def byte4_to_int(b: int) -> int:
    return b if b < _NUM_FREE_VALUES else _NUM_FREE_VALUES + _int4_to_long(b - _NUM_FREE_VALUES)


LENGTH_TABLE = np.array([byte4_to_int(i) for i in range(256)], dtype=np.float32)


def quantized_length(length: int) -> int:
    """The document length Lucene's BM25 sees (exact below 24, then 4 significant bits)."""
    return byte4_to_int(int_to_byte4(length))


def lucene_bm25_weights(
    tf: np.ndarray,
    doc_len: np.ndarray,
    df: np.ndarray,
    doc_count: int,
    sum_total_tf: int,
    k1: float,
    b: float,
) -> np.ndarray:
    """Per-posting BM25 scores exactly as Lucene's BM25Similarity computes them (float32).

    ``tf``, ``doc_len`` (the document's field length) and ``df`` are aligned per posting.
    """
    f32 = np.float32
    if len(tf) == 0:
        return np.zeros(0, dtype=f32)
    avgdl = f32(sum_total_tf / doc_count)
    norms = np.array(
        [int_to_byte4(int(n)) for n in range(int(doc_len.max(initial=0)) + 1)], dtype=np.int64
    )
    # cache[i] = 1f / (k1 * ((1 - b) + b * LENGTH_TABLE[i] / avgdl)), float arithmetic
    cache = (f32(1) / (f32(k1) * ((f32(1) - f32(b)) + f32(b) * LENGTH_TABLE / avgdl))).astype(f32)
    norm_inverse = cache[norms[doc_len]]
    # idf = (float) Math.log(1 + (docCount - docFreq + 0.5D) / (docFreq + 0.5D))
    idf = np.log(1 + (doc_count - df + 0.5) / (df + 0.5)).astype(f32)
    # weight - weight / (1f + freq * normInverse)
    return (idf - idf / (f32(1) + tf.astype(f32) * norm_inverse)).astype(f32)
