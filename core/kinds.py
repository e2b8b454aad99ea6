"""What a message is (DESIGN.md "What is a memory, and when Mnemo answers").

Every stored message gets a `kind`: `told` (something people said: statements, what people say
to each other in a group, questions included, and the text of voice notes and images),
`question` (a question put to Mnemo), or `command` (any `/command`). Mnemo's own replies are
`reply`. Only `told` is memory: indexed, cited, listed by `/memory`.

Whether a line put to Mnemo asks something is read from its shape (a question mark, a
question word, a request to tell or show): cheap, predictable, and the same for every platform.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

TOLD = "told"
QUESTION = "question"
COMMAND = "command"
REPLY = "reply"
NOT_MEMORY = [QUESTION, COMMAND, REPLY]  # a missing kind reads as told (documents from before kinds)

# Characters that show nothing: a line of only these is empty.
_INVISIBLE = re.compile(r"[\s\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]+")
_MENTION = re.compile(r"(<@[!&]?\w+>|@\w+)")
_WORD = re.compile(r"[\w']+")
_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")
_QUESTION_MARKS = ("?", "？", "؟", "¿")

_WH = {"what", "what's", "whats", "when", "when's", "where", "where's", "who", "who's", "whom", "whose",
       "why", "how", "how's", "which"}
_AUX = {"is", "are", "am", "was", "were", "do", "does", "did", "can", "could", "would", "should", "will",
        "shall", "have", "has", "had", "may", "might", "isn't", "aren't", "wasn't", "don't", "doesn't",
        "didn't", "can't", "won't", "wouldn't", "shouldn't", "haven't", "hasn't"}
# After an auxiliary, these make a question ("is it...", "do you...", "did anyone...");
# without them "Have a nice day" would be one.
_SUBJECT = {"i", "you", "he", "she", "it", "we", "they", "there", "this", "that", "these", "those", "my",
            "your", "his", "her", "our", "their", "the", "anyone", "anybody", "someone", "somebody", "any"}
_REQUEST = {"tell", "show", "list", "give", "find", "search", "recall", "explain", "summarize", "summarise",
            "describe", "name", "quote"}
_FIRST_PERSON = {"i", "i'm", "im", "i've", "i'll", "i'd", "we", "we're", "we've", "we'll"}
# Greetings and thanks, also as people type them in other languages ("Olá!", "merci beaucoup"),
# compared with accents folded ("olá" -> "ola", "dziękuję" -> "dziekuje").
_THANKS = {"thanks", "thank", "thx", "ty", "cheers", "merci", "gracias", "danke", "obrigado", "obrigada",
           "grazie", "tack", "takk", "bedankt", "dziekuje"}
_HELLO = {"hi", "hello", "hey", "yo", "morning", "evening", "hola", "ola", "bonjour", "salut", "hallo", "ciao",
          "hej", "moin", "servus", "namaste", "buenos", "bom", "guten", "buongiorno"}
# Words of a line that tells nothing: greetings, thanks and what goes with them.
_SOCIAL = _THANKS | _HELLO | {
    "you", "ok", "okay", "cool", "great", "nice", "good", "night", "bye", "yes", "yeah", "no", "nope", "sure",
    "lol", "wow", "awesome", "perfect", "done", "noted", "got", "it", "welcome", "sorry", "please", "mnemo", "so",
    "much", "very", "a", "lot", "all", "again",
    "beaucoup", "muchas", "muito", "vielen", "mille", "dank", "dia", "dias", "tag",
}
_FILLER = {"hey", "hi", "hello", "ok", "okay", "so", "and", "but", "please", "pls", "mnemo", "well", "um",
           "also", "then", "quick", "question"}


def visible(text: str) -> str:
    """`text` without invisible characters at its ends ("" when it shows nothing)."""
    return _INVISIBLE.sub(" ", text).strip()


GREETING = "Hi! Tell me things and I'll remember them, or ask me about what you told me."


def small_talk_reply(text: str) -> str | None:
    """A line that tells nothing ("thanks!", "hi", "👍") gets a friendly word back and is not
    a memory (it would only crowd out what was said). None when `text` says something."""
    text = strip_mentions(visible(text))
    words = _folded_words(text)
    if any(c.isdigit() for c in text) or not all(w in _SOCIAL for w in words):
        return None
    if any(w in _THANKS for w in words):
        return "You're welcome!"
    if any(w in _HELLO for w in words) or "👋" in text:
        return GREETING
    return "👍"


def _folded_words(text: str) -> list[str]:
    """Lower-cased words without accents: "Olá, obrigada" -> ["ola", "obrigada"]."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return [w.lower() for w in _WORD.findall(folded.replace("’", "'"))]


def strip_mentions(text: str) -> str:
    return " ".join(_MENTION.sub(" ", text).split())


def is_question(text: str, *, searches: bool = True) -> bool:
    """Whether `text` asks something: any sentence ending in a question mark, a first or last
    sentence that opens like a question or a request ("tell me...", "remind me when..."), or
    (with `searches`) a few words typed like a search ("wifi password")."""
    text = visible(text)
    if not text:
        return False
    sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
    if any(s.rstrip(" \"')]»").endswith(_QUESTION_MARKS) for s in sentences) or text.startswith("¿"):
        return True
    if any(_opens_a_question(s) for s in {sentences[0], sentences[-1]}):
        return True
    return searches and _looks_like_a_search(text)


def _looks_like_a_search(text: str) -> bool:
    """One to three words, no digits or punctuation, not a greeting: "locker code", "Ana's
    birthday". ("standup at 10", "I moved", "thanks!", "List: milk, eggs" tell.)"""
    words = _folded_words(text)
    if not 1 <= len(words) <= 3 or text.endswith((".", "!")) or any(c.isdigit() or c in ":;," for c in text):
        return False
    return words[0] not in _FIRST_PERSON and not all(w in _SOCIAL for w in words)


def _opens_a_question(sentence: str) -> bool:
    words = [w.lower() for w in _WORD.findall(sentence.replace("’", "'"))]
    while words and words[0] in _FILLER:
        words.pop(0)
    if not words:
        return False
    first, second = words[0], words[1] if len(words) > 1 else ""
    if first in _WH:
        return True
    if first in _AUX:
        return second in _SUBJECT
    if first == "remind":  # "remind me when/what..." asks; "remind me that/to..." tells
        return len(words) > 2 and words[2] in _WH | {"about", "of"}
    if first == "list":  # "list my...", not "list: milk, eggs"
        return second in _SUBJECT | {"all", "every", "everything"}
    return first in _REQUEST and second in {"me", "us", "everything", "all", "what", "anything"}


def classify(
    text: str, *, is_command: bool, command_name: str | None, is_dm: bool, mentions_bot: bool,
    replies_to_bot: bool, has_attachments: bool,
) -> str:
    """The kind of a message when it arrives. `command_name` is the parsed `/command`, if any."""
    if command_name is not None:
        return QUESTION if command_name in ("ask", "deep") else COMMAND
    if is_command:
        return COMMAND
    if has_attachments:
        return TOLD  # the text of voice notes and images is memory
    if not (is_dm or mentions_bot or replies_to_bot):
        return TOLD  # people talking to each other in a group, questions included
    said = strip_mentions(text) if mentions_bot else text
    if not visible(said):
        return QUESTION  # "@mnemo" alone: addressed, nothing told
    return QUESTION if is_question(said) else TOLD


def kind_of_doc(doc: dict[str, Any], command_name: str | None) -> str:
    """The kind of a stored message document (the migration of data from before kinds)."""
    return classify(
        doc.get("text") or "", is_command=bool(doc.get("is_command")), command_name=command_name,
        is_dm=bool(doc.get("is_dm")), mentions_bot=bool(doc.get("mentions_bot")),
        replies_to_bot=bool(doc.get("replies_to_bot")), has_attachments=bool(doc.get("attachments")),
    )
