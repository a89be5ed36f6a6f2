"""The languages a campaign can be sent in: each one's footer, keywords and replies.

A campaign has one language (``Campaign.language``, ``campaign create --language fr``,
English by default); its footer is the one appended to every message it sends (``sms.py``
measures it with the rest, so a footer must be GSM-7 to keep a message in 160 septets:
the French one is, 'é' is in the GSM-7 alphabet).

Keywords are read the other way round: an inbound text cannot be known to come from a
speaker of one language (a number may have been texted by campaigns in several), so the
keywords of every language count for every number. An opt-out keyword in any language
stops; opt-in keywords are few on purpose, since a false opt-in would text someone who did
not ask for it. Keywords are compared without case, accents or surrounding punctuation:
"Arrêt", "ARRET" and "arret !" are one keyword.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

DEFAULT_LANGUAGE = "en"


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    #: Appended to every message of a campaign in this language (part of its stored body).
    footer: str
    #: Keywords (upper case, without accents) that stop every message to the number.
    opt_out: frozenset[str]
    #: Keywords that lift an opt-out.
    opt_in: frozenset[str]
    #: Keywords answered with the help reply.
    help: frozenset[str]
    #: The help reply when ``SMS_HELP_REPLY`` says none.
    help_reply: str
    #: The confirmation of an opt-out that Twilio did not handle (see ``web.py``).
    stopped_reply: str


ENGLISH = Language(
    code="en",
    name="English",
    footer="Reply STOP to unsubscribe",
    opt_out=frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}),
    opt_in=frozenset({"START", "YES", "UNSTOP"}),
    help=frozenset({"HELP", "INFO"}),
    help_reply="You get our offers by text. Reply STOP to unsubscribe, START to subscribe again. "
               "Msg & data rates may apply.",
    stopped_reply="You are unsubscribed and will get no more messages. Reply START to subscribe again.",
)

FRENCH = Language(
    code="fr",
    name="French",
    footer="Répondez STOP pour vous désabonner",
    opt_out=frozenset({"ARRET", "DESABONNER", "DESINSCRIRE", "DESINSCRIPTION"}),
    opt_in=frozenset(),  # START (every language's) resubscribes; "OUI" answers too many questions
    help=frozenset({"AIDE"}),
    help_reply="Vous recevez nos offres par SMS. Répondez STOP pour vous désabonner, START pour vous réabonner.",
    stopped_reply="Désabonnement confirmé : vous ne recevrez plus de messages. Répondez START pour vous réabonner.",
)

LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (ENGLISH, FRENCH)}

#: Every language's keywords, for every number.
OPT_OUT_KEYWORDS = frozenset().union(*(lang.opt_out for lang in LANGUAGES.values()))
OPT_IN_KEYWORDS = frozenset().union(*(lang.opt_in for lang in LANGUAGES.values()))
HELP_KEYWORDS = frozenset().union(*(lang.help for lang in LANGUAGES.values()))

_EDGE_PUNCTUATION = re.compile(r"^[\W_]+|[\W_]+$")


def language(code: str | None) -> Language:
    """The language of ``code`` (None: the default, as for campaigns created before languages);
    ValueError naming the known ones otherwise."""
    found = LANGUAGES.get(code or DEFAULT_LANGUAGE)
    if found is None:
        raise ValueError(f"language {code!r} is not one of {', '.join(sorted(LANGUAGES))}")
    return found


def footer(code: str | None) -> str:
    return language(code).footer


def keyword(body: str | None) -> str:
    """An inbound text as a keyword would be written in the tables: surrounding whitespace
    and punctuation dropped, accents removed, upper case (" Arrêt! " is "ARRET")."""
    word = _EDGE_PUNCTUATION.sub("", body or "")
    decomposed = unicodedata.normalize("NFKD", word)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).upper()


def language_of_keyword(word: str) -> Language | None:
    """The language whose tables hold ``word`` (already a ``keyword``), English first."""
    for lang in LANGUAGES.values():
        if word in lang.opt_out or word in lang.opt_in or word in lang.help:
            return lang
    return None
