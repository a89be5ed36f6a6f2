"""An inbound STOP through the web process reaches the number, not only a row: every
customer holding it, stored in national format and never texted, and the suppression list
that imports do not lift; START lifts it."""

from __future__ import annotations

import io

from importer import import_customers
from models import Customer, Suppression
from schema import create_schema
from tests.factories import make_customers
from tests.test_web import web  # noqa: F401  (the signed-request client fixture)


def test_a_stop_from_a_number_in_national_format_never_texted_suppresses_every_row_with_it(web):  # noqa: F811
    # Given two rows of one person in national formats, never texted, after the release phase
    ids = make_customers(2)
    Customer.update(phone="212-555-0177").where(Customer.id == ids[0]).execute()
    Customer.update(phone="(212) 555 0177").where(Customer.id == ids[1]).execute()
    create_schema(default_region="US")

    # When a signed STOP comes from +12125550177
    assert web.inbound("+12125550177", "STOP").status_code == 200

    # Then both are unsubscribed and the number is suppressed
    assert [c.sms_subscribed for c in Customer.select().order_by(Customer.id)] == [False, False]
    assert Suppression.get(Suppression.phone_e164 == "+12125550177").source == "inbound"

    # When an import says the number opted in, then a START comes from it
    import_customers(io.StringIO("external_ref,phone,sms_opt_in\nX,2125550177,yes\n"), default_region="US")
    assert Customer.select().where(Customer.sms_subscribed == True).count() == 0  # noqa: E712
    assert web.inbound("+12125550177", "START").status_code == 200

    # Then every row with the number is subscribed again
    assert Customer.select().where(Customer.sms_subscribed == True).count() == 3  # noqa: E712
    assert not Suppression.select().exists()
