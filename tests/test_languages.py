"""A campaign's language: its footer (part of the stored body, measured with it), and the
keywords of every language read in inbound texts (``languages.py``)."""

from __future__ import annotations

import pytest

import fanout
import languages
from errors import PermanentError
from models import Campaign, Message, MessageStatus
from rendering import check_campaign, check_draft
from segments import measure
from sms import compose
from tests.factories import make_customers
from tests.test_cli_campaign import assert_fails, run_cli

FRENCH_FOOTER = "Répondez STOP pour vous désabonner"
BASE = "https://x.test/q"


@pytest.fixture
def database(sqlite_db, tmp_path) -> str:
    """The URL of the test's SQLite file, which the CLI's subprocess shares."""
    return f"sqlite:///{tmp_path / 'campaigns.db'}"


def test_the_french_footer_is_the_issues_text_and_keeps_a_message_in_gsm7():
    # Given the French language's footer, when it is measured, then it is GSM-7 ('é' is in the alphabet)
    assert languages.footer("fr") == FRENCH_FOOTER
    assert measure(FRENCH_FOOTER).encoding == "GSM-7"

    # When a message is composed with it, then the whole text stays GSM-7, the footer last
    text, length = compose("Bonjour {first_name}, vos offres : {short_url}", {"first_name": "Zoé", "short_url": "x.co/1"},
                           footer=FRENCH_FOOTER)
    assert text == "Bonjour Zoé, vos offres : x.co/1\n" + FRENCH_FOOTER
    assert (length.encoding, length.segments, length.units) == ("GSM-7", 1, len(text))


@pytest.mark.parametrize("code", sorted(languages.LANGUAGES))
def test_every_languages_footer_and_replies_fit_one_gsm7_segment(code):
    # Given a language, when its texts are measured, then each is one GSM-7 segment
    lang = languages.language(code)
    for text in (lang.footer, lang.help_reply, lang.stopped_reply):
        length = measure(text)
        assert (length.encoding, length.segments) == ("GSM-7", 1), text


@pytest.mark.parametrize("body, word", [
    ("ARRÊT", "ARRET"), ("arrêt", "ARRET"), ("Arret !", "ARRET"), (" ARRET. ", "ARRET"), ("Arrête", "ARRETE"),
    ("stop", "STOP"), ("Désabonner", "DESABONNER"), ("aide?", "AIDE"), ("", ""),
])
def test_keywords_are_read_without_case_accents_or_surrounding_punctuation(body, word):
    # Given an inbound text, when it is read as a keyword, then case, accents and edges are gone
    assert languages.keyword(body) == word


def test_every_languages_keywords_count_for_every_number():
    # Given the tables, when the keywords of all languages are gathered, then both languages' are there
    assert {"STOP", "ARRET", "DESABONNER"} <= languages.OPT_OUT_KEYWORDS
    assert {"HELP", "INFO", "AIDE"} <= languages.HELP_KEYWORDS
    assert "ARRETE" not in languages.OPT_OUT_KEYWORDS and "OUI" not in languages.OPT_IN_KEYWORDS
    assert not languages.OPT_OUT_KEYWORDS & languages.OPT_IN_KEYWORDS
    assert languages.language_of_keyword("AIDE") is languages.FRENCH
    assert languages.language_of_keyword("INFO") is languages.ENGLISH


def test_an_unknown_language_is_refused_before_the_campaign_is_saved_and_at_its_fan_out():
    # Given a draft in a language without a table
    draft = Campaign(name="x", template="Hi {short_url}", language="de")

    # When it is checked, then it is refused naming the languages known
    with pytest.raises(PermanentError, match=r"--language 'de' is not one of en, fr") as caught:
        check_draft(draft, BASE, "10/minute", labels={"language": "--language"})
    assert caught.value.code == "invalid_language"
    with pytest.raises(PermanentError, match="is not one of en, fr"):
        check_campaign(draft, BASE)


def test_a_template_that_fits_with_the_english_footer_but_not_the_french_one_is_refused_in_french(db):
    # Given a template 2 septets short of a segment with the English footer (and its link)
    link = len(f"{BASE}/XXXXXXXX")
    template = "a" * (160 - 2 - len(languages.footer("en")) - 1 - link) + "{short_url}"

    # When it is checked in English and in French
    check_campaign(Campaign(name="en", template=template, language="en"), BASE)
    with pytest.raises(PermanentError, match="cannot fit in one SMS even with an empty name"):
        check_campaign(Campaign(name="fr", template=template, language="fr"), BASE)

    # Then a stored campaign created before languages (no language) is English
    old = Campaign.create(name="old", template=template)
    Campaign.update(language=None).where(Campaign.id == old.id).execute()
    check_campaign(Campaign.get_by_id(old.id), BASE)


def test_a_french_campaigns_fan_out_stores_the_french_footer_in_every_body(db):
    # Given customers and a French campaign
    make_customers(3)
    campaign = Campaign.create(name="Soldes", template="Bonjour {first_name}, les soldes : {short_url}", language="fr")

    # When it is fanned out
    fanout.fan_out(campaign.id, short_url_base=BASE)

    # Then every stored body ends in the French footer and is GSM-7
    rows = list(Message.select().where(Message.campaign == campaign.id))
    assert len(rows) == 3 and {r.status for r in rows} == {MessageStatus.PENDING}
    assert all(r.body.endswith("\n" + FRENCH_FOOTER) and r.encoding == "GSM-7" for r in rows)


def test_campaign_create_takes_a_language_and_refuses_one_it_does_not_know(database):
    # When a campaign is created in French, and another in a language without a table
    made = run_cli("campaign", "create", "--name", "Soldes", "--template", "Bonjour {short_url}", "--language", "FR",
                   database=database)
    refused = run_cli("campaign", "create", "--name", "X", "--template", "Hi {short_url}", "--language", "de",
                      database=database)

    # Then the first is stored in French, the second refused in one line
    assert made.returncode == 0, made.stderr
    assert Campaign.get_by_id(int(made.stdout)).language == "fr"
    assert_fails(refused, r"Error: --language 'de' is not one of en, fr")
    assert Campaign.select().count() == 1
