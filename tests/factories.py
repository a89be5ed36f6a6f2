"""Test data: customers with valid, distinct phones and QR codes, in bulk."""

from __future__ import annotations

from models import Campaign, Customer, QRCode, database

TEMPLATE = "Hi {first_name}, your pass is ready: {short_url}"


def phone_for(index: int) -> str:
    """A valid, distinct US mobile-format number per index (NYC 212 and 646 exchanges)."""
    return f"+1212{200 + index // 10_000:03d}{index % 10_000:04d}"


def make_customers(count: int, *, unsubscribed=(), bad_phones=None, no_qr=(), first_name="Sam"):
    """Create ``count`` customers; indexes listed are made ineligible. Returns their ids."""
    bad_phones = bad_phones or {}
    customers, codes = [], []
    for i in range(count):
        customers.append(
            {
                "first_name": f"{first_name}{i}",
                "last_name": "Doe",
                "phone": bad_phones.get(i, phone_for(i)),
                "sms_subscribed": i not in unsubscribed,
            }
        )
    with database.atomic():
        for chunk_start in range(0, count, 500):
            Customer.insert_many(customers[chunk_start : chunk_start + 500]).execute()
        ids = [c.id for c in Customer.select(Customer.id).order_by(Customer.id.desc()).limit(count)][::-1]
        for i, customer_id in enumerate(ids):
            if i not in no_qr:
                codes.append({"customer": customer_id, "code": f"C{customer_id:07d}"})
        for chunk_start in range(0, len(codes), 500):
            QRCode.insert_many(codes[chunk_start : chunk_start + 500]).execute()
    return ids


def make_campaign(template: str = TEMPLATE, name: str = "Test campaign") -> int:
    return Campaign.create(name=name, template=template).id
