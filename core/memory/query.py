"""What a question says beyond its words: who it is about and when.

- People: names of the scope's own authors ("what did Alice say about...") select whose
  memories to prefer; they are taken out of the text that is embedded, because in a chat where
  every memory carries an author's name the name only adds noise to semantic similarity.
- Time: "when ..." questions prefer memories that mention a time ("last week", "in May");
  "yesterday", "last week", "in May 2023" and the like become a window of message times,
  relative to when the question is asked.
- Names: the capitalized words inside a sentence ("the capital of France", "Ana's birthday");
  a question whose names the scope never mentions is about something Mnemo was not told.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from core.memory.lexical import STOPWORDS, words

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
_MONTHS["sept"] = 9

TIME_WORDS = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|last|next|ago|week|weekend|month|year|summer|winter|spring|"
    r"autumn|fall|monday|tuesday|wednesday|thursday|friday|saturday|sunday|recently|soon|"
    r"january|february|march|april|may|june|july|august|september|october|november|december|"
    r"(?:19|20)\d\d)\b",
    re.IGNORECASE,
)
_ASKS_WHEN = re.compile(
    r"^\W*(when\b|how long\b|what (year|month|date|day|time)\b|since when\b|how many (days|weeks|months|years)\b)",
    re.IGNORECASE,
)
_AGO = re.compile(r"\b(\d+|a|one|two|three|four|five|six)\s+(day|week|month|year)s?\s+ago\b", re.IGNORECASE)
_IN_MONTH = re.compile(
    r"\b(?:in|during|on|of)\s+(january|february|march|april|may|june|july|august|september|october|"
    r"november|december|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)\b"
    r"(?:\s+(\d{1,2})(?:st|nd|rd|th)?\b)?(?:\s*,?\s*((?:19|20)\d\d))?",
    re.IGNORECASE,
)
_NAME = re.compile(r"[A-Z][\w'’-]*")
_SENTENCE_END = re.compile(r"[.?!:;\"“”(\[]\s*$")
# Questions whose answer is gathered over time: lists ("what books has Alice read?", "how many
# times...", "what do Alice and Bruno both like?", "where has Alice camped?") and guesses from
# what a person has said ("would Alice likely enjoy...?", "what might Bruno's job be?").
_ASKS_MANY = re.compile(
    r"^\W*(?:(?:what|which)\s+(?:\w+\s+)?\w+(?<!ss)(?<!'s)(?<![aeiu]s)s\b(?<!\bis)(?<!\bwas)(?<!\bdoes)(?<!\bhas)"
    r"|how many\b|in what ways\b|what (?:kind|kinds|types?) of \w+s\b)"
    r"|^\W*(?:would|could)\b|\b(?:likely|might|probably)\b"
    r"|\bboth\b|\b(?:has|have)\s+\w+\s+(?:ever\s+)?\w+ed\b|\bhas\s+\w+\s+(?:been|done|made|read|seen|gone|taken|had)\b",
    re.IGNORECASE,
)
_NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


def mentions_time(text: str) -> bool:
    return TIME_WORDS.search(text) is not None


def asks_when(question: str) -> bool:
    return _ASKS_WHEN.search(question) is not None


@dataclass
class QueryPlan:
    text: str  # the question as asked (lexical matching)
    semantic_text: str  # without the scope's author names (embedded)
    named_authors: set[str]  # lower-cased author names the question mentions
    asks_when: bool
    window: tuple[float, float] | None  # epoch seconds [start, end) the question points at
    names: list[str] = field(default_factory=list)  # lower-cased capitalized words, see `names_in`
    asks_many: bool = False  # the answer is gathered over several conversations (a list, a guess)


def plan_query(question: str, author_names: set[str], now: float | None = None) -> QueryPlan:
    """`author_names`: lower-cased names of people who wrote memories in the scope."""
    tokens = set(words(question))
    named = set()
    first_names: dict[str, str] = {}
    for name in author_names:
        parts = name.split()
        if parts:
            first_names.setdefault(parts[0], name)
    tokens -= STOPWORDS  # a person called "Will" is not named by "what will we do?"
    for name in author_names:
        if name in tokens or (name.split() and all(part in tokens for part in name.split())):
            named.add(name)
    for first, name in first_names.items():
        if first in tokens and len(first) > 2:
            named.add(name)
    semantic = question
    for part in sorted({part for name in named for part in name.split()}, key=len, reverse=True):
        semantic = re.sub(rf"\b{re.escape(part)}('s)?\b", " ", semantic, flags=re.IGNORECASE)
    semantic = " ".join(semantic.split())
    if len(words(semantic)) < 2:
        semantic = question  # the question is little more than a name: keep it whole
    return QueryPlan(
        question,
        semantic,
        named,
        asks_when(question),
        time_window(question, now),
        names_in(question),
        _ASKS_MANY.search(question) is not None,
    )


def names_in(question: str) -> list[str]:
    """Lower-cased words written with a capital inside a sentence (a sentence's first word is
    capitalized anyway), without stopwords, months and days: "Ana", "france", "lisbon"."""
    found: list[str] = []
    for match in _NAME.finditer(question):
        before = question[: match.start()]
        if not before.strip() or _SENTENCE_END.search(before) or (before and before[-1].isalnum()):
            continue
        for word in words(match.group()):
            if word not in STOPWORDS and word not in _MONTHS and not TIME_WORDS.fullmatch(word) and word not in found:
                found.append(word)
    return found


def time_window(question: str, now: float | None) -> tuple[float, float] | None:
    """A window of message times the question refers to, relative to `now`, or None."""
    if now is None:
        return None
    today = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    text = question.lower()

    def span(start: datetime, end: datetime) -> tuple[float, float]:
        return (start.timestamp(), end.timestamp())

    if re.search(r"\byesterday\b", text):
        return span(today - timedelta(days=1), today)
    if re.search(r"\btoday\b|\bthis morning\b|\btonight\b", text):
        return span(today, today + timedelta(days=1))
    if re.search(r"\blast week\b", text):
        monday = today - timedelta(days=today.weekday())
        return span(monday - timedelta(days=7), monday)
    if re.search(r"\bthis week\b", text):
        return span(today - timedelta(days=today.weekday()), today + timedelta(days=1))
    if re.search(r"\blast month\b", text):
        first = today.replace(day=1)
        previous = (first - timedelta(days=1)).replace(day=1)
        return span(previous, first)
    if re.search(r"\blast year\b", text):
        return span(today.replace(year=today.year - 1, month=1, day=1), today.replace(month=1, day=1))
    ago = _AGO.search(text)
    if ago:
        count = int(ago.group(1)) if ago.group(1).isdigit() else _NUMBERS[ago.group(1)]
        days = {"day": 1, "week": 7, "month": 30, "year": 365}[ago.group(2)] * count
        center = today - timedelta(days=days)
        slack = timedelta(days=max(1, days // 4))
        return span(center - slack, center + slack + timedelta(days=1))
    month = _IN_MONTH.search(text)
    if month:
        number = _MONTHS.get(month.group(1))
        if number:
            year = (
                int(month.group(3))
                if month.group(3)
                else (today.year if number <= today.month else today.year - 1)
            )
            start = datetime(year, number, 1, tzinfo=UTC)
            end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=UTC)
            day = int(month.group(2)) if month.group(2) else 0
            if 1 <= day <= calendar.monthrange(year, number)[1]:
                start = start.replace(day=day) - timedelta(days=1)
                end = start + timedelta(days=3)
            return span(start, end)
    return None
