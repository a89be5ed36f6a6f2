"""What an inbound text means (a keyword of any language, or a reply), and what the web
process answers when Twilio does not answer it.

- **HELP** (HELP, INFO, AIDE: ``languages.HELP_KEYWORDS``): Twilio's Advanced Opt-Out, when
  in use, answers it itself and says so in the webhook (``OptOutType=HELP``); then we say
  nothing. Otherwise the answer is ``SMS_HELP_REPLY``, or the help reply of the language
  the text was in: the keyword's language when only one language has it (AIDE), else the
  language of the last campaign sent to the number (INFO is French too), else English.
- **An opt-out Twilio does not know** (ARRET, DESABONNER...: every opt-out keyword that is
  not one of Twilio's own, the English table's): Twilio neither blocks the number nor
  confirms, so the confirmation (in the keyword's language) is ours, once per inbound
  message. Twilio's own keywords are confirmed by Twilio.
"""

from __future__ import annotations

import languages
from models import Campaign, Message

#: Every language's keywords count for every number (``languages.py``): ARRET stops anyone.
STOP_KEYWORDS = languages.OPT_OUT_KEYWORDS
START_KEYWORDS = languages.OPT_IN_KEYWORDS
HELP_KEYWORDS = languages.HELP_KEYWORDS
#: The opt-out keywords Twilio itself handles (blocks the number and confirms).
TWILIO_OPT_OUT_KEYWORDS = languages.ENGLISH.opt_out


def opt_out_keyword(body: str | None) -> str | None:
    """The keyword an inbound text is, if it is nothing else: case, accents, surrounding
    whitespace and punctuation ignored (" Stop! " is STOP, "Arrêt" is ARRET; "stop by the
    store" is not one)."""
    word = languages.keyword(body)
    return word if word in STOP_KEYWORDS or word in START_KEYWORDS or word in HELP_KEYWORDS else None


def opt_out_action(body: str | None, opt_out_type: str | None) -> tuple[str | None, str | None]:
    """("stop" | "start" | "help" | None, keyword). Twilio's ``OptOutType`` (Advanced
    Opt-Out) wins over our own reading of the body."""
    kind = (opt_out_type or "").strip().upper()
    keyword = opt_out_keyword(body)
    if kind in ("STOP", "START", "HELP"):
        return kind.lower(), keyword or f"OptOutType={kind}"
    if keyword in STOP_KEYWORDS:
        return "stop", keyword
    if keyword in START_KEYWORDS:
        return "start", keyword
    if keyword in HELP_KEYWORDS:
        return "help", keyword
    return None, None


def number_language(e164: str) -> languages.Language | None:
    """The language of the last campaign sent to ``e164`` (None if none was)."""
    last = (Campaign.select(Campaign.language).join(Message, on=(Message.campaign == Campaign.id))
            .where(Message.to_phone == e164, Message.twilio_sid.is_null(False))
            .order_by(Message.sent_at.desc(), Message.id.desc()).first())
    if last is None:
        return None
    try:
        return languages.language(last.language)
    except ValueError:
        return None


def help_reply(e164: str, word: str | None, *, configured: str = "") -> str:
    """The answer to a HELP keyword ``word`` from ``e164`` (``configured``: SMS_HELP_REPLY)."""
    if configured:
        return configured
    owners = [lang for lang in languages.LANGUAGES.values() if word in lang.help]
    if len(owners) == 1 and owners[0].code != languages.DEFAULT_LANGUAGE:
        return owners[0].help_reply
    return (number_language(e164) or (owners[0] if owners else languages.ENGLISH)).help_reply


def stopped_reply(word: str | None) -> str | None:
    """Our confirmation of an opt-out by ``word``, or None when Twilio confirms it itself."""
    if word is None or word in TWILIO_OPT_OUT_KEYWORDS:
        return None
    lang = languages.language_of_keyword(word)
    return lang.stopped_reply if lang is not None else None
