"""The dashboard's pages (GET): the campaigns, one campaign, a draft's preview, the form
of a new campaign, and a customer found by phone number.

A phone number is looked up by a POST (``/customers/find``), so it never appears in a URL
(nor in the router's access log); the customer's page is then addressed by their id and
shows the number masked.
"""

from __future__ import annotations

import itertools
from typing import Callable

from flask import Blueprint, abort, redirect, render_template, request, url_for

import consent
import inbox
from campaign_admin import list_campaigns
from dashboard.figures import campaign_page
from errors import InvalidPhone
from models import Campaign, Customer, CustomerTag, Message, OptOutEvent, Suppression
from prices import PriceTable
from reports import preview
from preview_text import format_preview
from sender_check import check_sender
from settings import Settings
from sms import mask_phone, normalize_phone

#: Campaigns per page of the list (the next page starts below the last id shown).
PAGE_SIZE = 200
#: A customer's messages and consent changes shown, newest first.
HISTORY_SHOWN = 100


def install(bp: Blueprint, settings: Settings, *, held_ms: Callable[[list[str]], int] | None = None) -> None:
    """The pages on ``bp``; a campaign's shows the rate limiter's holds read by ``held_ms``."""

    @bp.get("/")
    def campaigns():
        before = request.args.get("before", type=int)
        rows = list(itertools.islice(list_campaigns(batch_size=PAGE_SIZE + 1, before_id=before), PAGE_SIZE + 1))
        more = rows[PAGE_SIZE - 1]["id"] if len(rows) > PAGE_SIZE else None
        return render_template("campaigns.html", rows=rows[:PAGE_SIZE], more=more)

    @bp.get("/campaigns/<int:campaign_id>")
    def campaign(campaign_id: int):
        if Campaign.get_or_none(Campaign.id == campaign_id) is None:
            abort(404, f"campaign {campaign_id} does not exist")
        return render_template("campaign.html", **campaign_page(campaign_id, settings=settings, held_ms=held_ms))

    @bp.get("/campaigns/<int:campaign_id>/preview")
    def campaign_preview(campaign_id: int):
        campaign = Campaign.get_or_none(Campaign.id == campaign_id)
        if campaign is None:
            abort(404, f"campaign {campaign_id} does not exist")
        result = preview(
            campaign_id, short_url_base=settings.short_url_base, default_region=settings.default_region,
            samples=3, prices=PriceTable.of(settings), frequency_cap_h=settings.frequency_cap_h,
            check_sender=lambda sender: check_sender(settings, sender),
        )
        return render_template("preview.html", campaign=campaign, result=result, text=format_preview(result))

    @bp.get("/campaigns/new")
    def new_campaign():
        source = Campaign.get_or_none(Campaign.id == request.args.get("from", type=int)) if request.args.get("from") else None
        return render_template("new_campaign.html", source=source)

    @bp.get("/customers")
    def customers():
        return render_template("customer_find.html", found=None, problem=None)

    @bp.post("/customers/find")
    def find_customer():
        try:
            e164 = normalize_phone(request.form.get("phone") or "", settings.default_region)
        except InvalidPhone:
            return render_template("customer_find.html", found=None, problem="not a phone number"), 400
        found = consent.customers_for_phone(e164)
        if len(found) == 1:
            return redirect(url_for("dashboard.customer", customer_id=found[0]))
        rows = list(Customer.select().where(Customer.id.in_(found))) if found else []
        history = list(OptOutEvent.select().where(OptOutEvent.phone_e164 == e164)
                       .order_by(OptOutEvent.id.desc()).limit(HISTORY_SHOWN))
        return render_template("customer_find.html", found=rows, masked=mask_phone(e164), history=history,
                               suppressed=Suppression.get_or_none(Suppression.phone_e164 == e164), problem=None)

    @bp.route("/<path:rest>", methods=["GET", "POST"])
    def unknown(rest: str):
        """Any other path under /dashboard: 404, once signed in (signed out, the sign-in
        page: which paths exist is not told)."""
        abort(404)

    @bp.get("/customers/<int:customer_id>")
    def customer(customer_id: int):
        person = Customer.get_or_none(Customer.id == customer_id)
        if person is None:
            abort(404, f"customer {customer_id} does not exist")
        e164 = person.phone_e164
        messages = list(Message.select(Message, Campaign.id, Campaign.name).join(Campaign)
                        .where(Message.customer == customer_id).order_by(Message.id.desc()).limit(HISTORY_SHOWN))
        consent_changes = OptOutEvent.customer == customer_id
        if e164:
            consent_changes |= OptOutEvent.phone_e164 == e164
        history = list(OptOutEvent.select().where(consent_changes).order_by(OptOutEvent.id.desc()).limit(HISTORY_SHOWN))
        tags = [t.tag for t in CustomerTag.select(CustomerTag.tag).where(CustomerTag.customer == customer_id)]
        return render_template(
            "customer.html", person=person, masked=mask_phone(e164 or person.phone or ""), messages=messages,
            history=history, replies=inbox.inbox_for(customer_id)[:HISTORY_SHOWN], tags=tags,
            suppressed=Suppression.get_or_none(Suppression.phone_e164 == e164) if e164 else None)
