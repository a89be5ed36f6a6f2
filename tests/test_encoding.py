"""Messages that fit: smart encoding, the overflow policies, counting by grapheme cluster,
and the preview's view of them (lengths by policy, who fails, cost by country)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import fanout
from errors import MessageTooLong, PermanentError
from models import Campaign, Customer, Message, MessageStatus
from overflow import FitRules, fit, parse_overflow
from prices import PriceTable, parse_prices
from reports import preview
from segments import measure
from smart_encoding import SUBSTITUTIONS, smart_encode, transliterate
from sms import FOOTER, compose
from tests.factories import make_campaign, make_customers

BASE = "https://x.test/q"
CYR = "ж"  # one UCS-2 unit, not GSM-7
FOOTER_COST = len(FOOTER) + 1


# --- smart encoding -----------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("It\u2019s \u201cgreat\u201d", "It's \"great\""),
    ("\u00abbonjour\u00bb", "\"bonjour\""),
    ("10\u201312 \u2014 now\u2026", "10-12 - now..."),
    ("a\u00a0b\u2009c\u202fd\u3000e", "a b c d e"),
    ("x\u200by\ufeffz\u00ad", "xyz"),
    ("\uff21\uff22\uff23 \uff11\uff12\uff13\uff01", "ABC 123!"),
    ("\u00bd price \u2022 today", "1/2 price - today"),
])
def test_look_alikes_become_their_gsm7_characters(raw, expected):
    assert smart_encode(raw) == expected
    assert measure(smart_encode(raw)).encoding == "GSM-7"


def test_gsm7_characters_and_those_without_a_look_alike_are_kept():
    text = "é ü Ç ß Ñ ø £ € [x] ë Ł 😀"
    assert smart_encode(text) == text
    # and no substitution produces a character outside GSM-7
    assert measure("".join(SUBSTITUTIONS.values())).encoding == "GSM-7"


def test_one_curly_apostrophe_no_longer_doubles_the_bill():
    # Given a template of about 140 characters written in a word processor
    template = "We\u2019re open late tonight " + "x" * 70 + " {short_url}"
    # When composed with and without smart encoding
    on, length_on = compose(template, {"short_url": "https://x.test/q/abc"})
    with pytest.raises(MessageTooLong):
        compose(template, {"short_url": "https://x.test/q/abc"}, FitRules(smart_encoding=False))
    # Then with it the message is one GSM-7 segment and its stored text is the replaced one
    assert (length_on.encoding, length_on.segments) == ("GSM-7", 1)
    assert on.startswith("We're open late tonight")


# --- transliteration ----------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("Zoë", "Zoe"), ("Łukasz", "Lukasz"), ("Nguyễn", "Nguyen"), ("François", "Francois"),
    ("Ðorđe", "Dorde"), ("Œuvre", "Oeuvre"), ("Дмитрий", "Dmitriy"),
    ("José Müller Çelik Strauß", "José Müller Çelik Strauß"),  # letters GSM-7 has are kept
    ("e\u0301", "é"),  # a letter with a combining accent is one cluster, GSM-7 has it composed
    ("Ana ❤️ 👍🏽", "Ana ❤️ 👍🏽"),  # not letters: kept whole
])
def test_transliteration_keeps_what_gsm7_has_and_replaces_the_rest(raw, expected):
    assert transliterate(raw) == expected


# --- the overflow policies ------------------------------------------------------

def _text(units: int, *, non_gsm: str = "ë") -> str:
    """A body of ``units`` UCS-2 units with one letter GSM-7 lacks."""
    return non_gsm + "a" * (units - 1)


def test_fail_refuses_what_does_not_fit_one_segment():
    assert fit(_text(70))[1].segments == 1
    with pytest.raises(MessageTooLong) as error:
        fit(_text(71))
    assert error.value.reason == "71 UCS-2 units > 70 for one segment (non-GSM character 'ë')"


def test_transliterate_applies_only_when_the_message_would_not_fit():
    rules = FitRules(on_overflow="transliterate")
    # a message that fits keeps its accents (UCS-2)
    kept, length = fit(_text(70), rules)
    assert (kept[0], length.encoding) == ("ë", "UCS-2")
    # one that does not becomes GSM-7 and fits
    text, length = fit(_text(71), rules)
    assert (text[0], length.encoding, length.segments) == ("e", "GSM-7", 1)
    # and one too long even in GSM-7 still fails
    with pytest.raises(MessageTooLong) as error:
        fit(_text(161), rules)
    assert error.value.reason == "161 GSM-7 septets > 160 for one segment"


def test_transliterate_cannot_make_an_emoji_fit():
    with pytest.raises(MessageTooLong):
        fit("😀" + "a" * 70, FitRules(on_overflow="transliterate"))


@pytest.mark.parametrize(("units", "segments"), [(70, 1), (71, 2), (134, 2)])
def test_segments_n_allows_up_to_n(units, segments):
    assert fit(_text(units), FitRules(on_overflow="segments:2"))[1].segments == segments


def test_segments_n_refuses_more_than_n():
    with pytest.raises(MessageTooLong) as error:
        fit(_text(135), FitRules(on_overflow="segments:2"))
    assert error.value.reason == "135 UCS-2 units > 2 segments (3 needed) (non-GSM character 'ë')"
    assert fit("a" * 306, FitRules(on_overflow="segments:2"))[1].segments == 2
    with pytest.raises(MessageTooLong):
        fit("a" * 307, FitRules(on_overflow="segments:2"))


@pytest.mark.parametrize("value", ["segments:1", "segments:11", "segments:", "segments:x", "truncate", ""])
def test_an_unknown_policy_is_refused_naming_the_choices(value):
    with pytest.raises(PermanentError) as error:
        parse_overflow(value)
    assert "is not one of fail, transliterate, segments:N (N from 2 to 10)" in error.value.reason


# --- counting by grapheme cluster ----------------------------------------------

@pytest.mark.parametrize(("cluster", "units"), [
    ("e\u0301", 2),  # a letter with a combining accent
    ("\U0001F1EB\U0001F1F7", 4),  # a flag: two regional indicators, each a surrogate pair
    ("\U0001F44D\U0001F3FD", 4),  # thumbs up with a skin tone
    ("\U0001F468\u200d\U0001F469\u200d\U0001F467", 8),  # a ZWJ family
])
def test_a_grapheme_cluster_across_a_segment_boundary_moves_whole_to_the_next(cluster, units):
    # Given 134 units: two full parts of 67 if nothing has to move
    before = 67 - units // 2  # the cluster would straddle the boundary at unit 67
    text = CYR * before + cluster + CYR * (134 - before - units)
    length = measure(text)
    # Then the cluster is not split: a third segment is needed
    assert (length.units, length.segments) == (134, 3)
    # while the same units without a cluster at the boundary take two
    assert measure(CYR * 134).segments == 2


def test_a_cluster_that_ends_exactly_at_the_boundary_stays():
    text = CYR * 63 + "\U0001F1EB\U0001F1F7" + CYR * 67  # flag at units 64-67
    assert measure(text).segments == 2


# --- campaigns ------------------------------------------------------------------

def test_a_transliterating_campaign_sends_and_stores_the_gsm7_text(db):
    # Given a customer whose name has letters GSM-7 lacks, and a template that fits only
    # in GSM-7
    (cid,) = make_customers(1)
    Customer.update(first_name="Zoë", last_name="Nguyễn").where(Customer.id == cid).execute()
    template = "Hello {name}! " + "x" * 80 + " {short_url}"
    failing = make_campaign(template=template, name="fail")
    transliterating = make_campaign(template=template, name="transliterate")
    Campaign.update(on_overflow="transliterate").where(Campaign.id == transliterating).execute()

    # When both are fanned out
    for campaign_id in (failing, transliterating):
        fanout.fan_out(campaign_id, short_url_base=BASE)

    # Then under fail the message fails too_long; under transliterate its stored body is
    # the GSM-7 text that is sent
    failed = Message.get(Message.campaign == failing)
    sent = Message.get(Message.campaign == transliterating)
    assert (failed.status, failed.error_code) == (MessageStatus.FAILED, "too_long")
    assert sent.status == MessageStatus.PENDING and sent.body.startswith("Hello Zoe Nguyen! ")
    assert (sent.encoding, sent.segments) == ("GSM-7", 1)


def test_the_preview_compares_the_policies_lists_who_fails_and_prices_each_country(db):
    # Given a US and a French customer with accents in their names, and prices for FR
    ids = make_customers(3)
    Customer.update(first_name="Zoë", last_name="Nguyễn").where(Customer.id == ids[0]).execute()
    Customer.update(first_name="Łucja", phone="+33612345678").where(Customer.id == ids[1]).execute()
    Customer.update(phone="+33612345679").where(Customer.id == ids[2]).execute()
    campaign_id = make_campaign(template="Hello {name}! " + "x" * 80 + " {short_url}")
    prices = PriceTable(us=0.0079, others=parse_prices("FR=0.0725"))

    # When it is previewed
    seen = preview(campaign_id, short_url_base=BASE, prices=prices)

    # Then it counts the failures under each policy and lists who fails under its own
    # (in UCS-2 the message takes 3 segments of 67 units)
    assert seen.fit.failing_under == {"fail": 2, "transliterate": 0, "segments:2": 2, "segments:3": 0}
    assert sorted(f["name"] for f in seen.fit.failing) == ["Zoë Nguyễn", "Łucja Doe"]
    assert all("+1" not in f["to"][3:] for f in seen.fit.failing)  # masked
    # and the cost of what would be sent, by country
    costs = {country: (c.messages, c.segments, c.cost) for country, c in seen.fit.priced().items()}
    assert costs == {"FR": (1, 1, 0.0725)}
    assert seen.estimated_cost == 0.0725


def test_a_country_without_a_price_is_counted_not_guessed(db):
    make_customers(1)
    Customer.update(phone="+33612345678").execute()
    campaign_id = make_campaign()
    seen = preview(campaign_id, short_url_base=BASE, prices=PriceTable(us=0.0079))
    assert seen.fit.priced()["FR"].price is None and seen.fit.unpriced_segments == 1
    assert seen.estimated_cost == 0


@pytest.mark.parametrize(("text", "message"), [
    ("FR:0.07", "'FR:0.07' is not COUNTRY=PRICE, e.g. FR=0.0725"),
    ("XX=0.07", "'XX' is not a country code such as FR or GB"),
])
def test_a_bad_price_list_is_refused(text, message):
    with pytest.raises(ValueError) as error:
        parse_prices(text)
    assert str(error.value) == message


def test_campaign_create_takes_the_policy_and_refuses_an_unknown_one(db, stub_broker):
    import cli

    ok = CliRunner().invoke(cli.main, ["campaign", "create", "--name", "fr", "--template",
                                       "Bonjour {first_name}, ça vous dit ? " + "x" * 40 + " {short_url}",
                                       "--on-overflow", "transliterate", "--no-smart-encoding"], prog_name="python -m cli")
    bad = CliRunner().invoke(cli.main, ["campaign", "create", "--name", "x", "--template", "{short_url}",
                                        "--on-overflow", "segments:20"], prog_name="python -m cli")
    assert ok.exit_code == 0, ok.output
    campaign = Campaign.get_by_id(int(ok.output))
    assert (campaign.on_overflow, campaign.smart_encoding) == ("transliterate", False)
    assert bad.exit_code == 1 and "on-overflow 'segments:20' is not one of" in bad.output
    assert "Traceback" not in bad.output
