"""The customer's QR-code page, end to end: a message sent through the fake Twilio, its short
link opened through the web process, the redirect followed to the page, and the page's
image read back by a real QR decoder (zxing-cpp, on the PNG's pixels).

The web process here runs with the default ``SHORT_URL_BASE`` and ``QR_DISPLAY_URL``
(``http://localhost:8000/q`` and ``http://localhost:8000/qr/{code}``): the links the
workers write are the ones the process serves; the requests go to its loopback address.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

import png
import pytest
import zxingcpp

import actors
import models
from actors.campaign_ops import send_test_message
from models import Click, Customer, QRCode
from qr_page import CONTENT_SECURITY_POLICY, SAMPLE_CODE, page_prefix
from settings import Secret, Settings
from tests.conftest import join_all
from tests.factories import make_campaign, make_customers
from tests.test_web import TOKEN, Server
from web import create_app

LINK = re.compile(r"https?://\S+")
IMAGE = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture
def site(sqlite_db, stub_broker):
    """The web process with the default link and page URLs."""
    settings = Settings(database_url=f"sqlite:///{models.database.obj.database}", twilio_auth_token=Secret(TOKEN))
    settings.validate()
    assert settings.qr_display_url == "http://localhost:8000/qr/{code}"
    server = Server(create_app(settings))
    yield server
    server.close()


def decode_qr_png(data: bytes) -> list[str]:
    """The texts a QR decoder reads in a PNG: its pixels, grey, handed to zxing-cpp."""
    width, height, rows, info = png.Reader(bytes=data).asDirect()
    planes, top = info["planes"], (1 << info["bitdepth"]) - 1
    grey = bytearray()
    for row in rows:
        grey.extend(value * 255 // top for value in row[::planes])  # the first plane (grey or red)
    pixels = memoryview(bytes(grey)).cast("B", (height, width))
    return [barcode.text for barcode in zxingcpp.read_barcodes(pixels, formats=zxingcpp.BarcodeFormat.QRCode)]


def path_of(url: str) -> str:
    return urlsplit(url).path


def test_a_short_link_from_a_sent_message_opens_the_qr_page_whose_image_decodes_to_the_customers_code(
        site, stub_broker, stub_worker, twilio_backend, fake_twilio):
    # Given a campaign sent to 3 customers through the fake Twilio
    make_customers(3)
    campaign_id = make_campaign()
    actors.send_campaign.send(campaign_id)
    join_all(stub_broker)
    assert len(fake_twilio.messages) == 3

    for sent in fake_twilio.messages:
        # When the customer opens the short link in the body Twilio was given
        [link] = LINK.findall(sent["body"])
        assert link.startswith("http://localhost:8000/q/")
        answer = site.get(path_of(link))
        # Then it redirects to their QR-code page, which the web process serves
        customer = Customer.get(Customer.phone == sent["to"])
        code = QRCode.get(QRCode.customer == customer).code
        assert answer.status_code == 302 and answer.headers["Location"] == f"http://localhost:8000/qr/{code}"
        page = site.get(path_of(answer.headers["Location"]))
        assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page.text
        assert f'<div class="code">{code}</div>' in page.text
        assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Content-Type-Options"] == "nosniff"
        # And its image, read pixel by pixel by a QR decoder, is the customer's code
        [image] = IMAGE.findall(page.text)
        assert decode_qr_png(base64.b64decode(image)) == [code]


def test_an_unknown_or_malformed_code_gets_a_404_page_with_the_usual_headers(site):
    # Given a customer with a QR code
    make_customers(1)

    for path in ("/qr/C9999999", "/qr/no", "/qr/has%20space", "/qr/" + "A" * 33, "/qr/%C3%A9t%C3%A9"):
        # When a browser asks for a code nobody has, or one no code could be
        answer = site.get(path)
        # Then it is a page for a person saying so, not found, with the headers of every answer
        assert answer.status_code == 404, path
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<h1>Code not found</h1>" in answer.text
        assert answer.headers["Cache-Control"] == "no-store" and answer.headers["X-Frame-Options"] == "DENY"


def test_a_code_the_import_allows_beyond_the_short_link_alphabet_is_served_and_decodes(site):
    # Given a customer whose imported QR code has lower case, a dash and an underscore
    (customer,) = make_customers(1)
    QRCode.update(code="store-42_ab").where(QRCode.customer == customer).execute()

    # When its page is opened
    page = site.get("/qr/store-42_ab")

    # Then it shows the code, and the image decodes to it
    assert page.status_code == 200 and '<div class="code">store-42_ab</div>' in page.text
    assert decode_qr_png(base64.b64decode(IMAGE.findall(page.text)[0])) == ["store-42_ab"]


def test_the_page_allows_its_own_stylesheet_and_inline_image_and_nothing_else(site):
    # Given a customer's page
    (customer,) = make_customers(1)
    page = site.get(f"/qr/{QRCode.get(QRCode.customer == customer).code}")

    # When its policy is read against what the page holds
    policy = dict(part.strip().split(" ", 1) for part in page.headers["Content-Security-Policy"].split(";"))
    [style] = re.findall(r"<style>(.*?)</style>", page.text, re.S)

    # Then the one stylesheet is allowed by its hash, images only inline, scripts not at all
    assert policy["default-src"] == "'none'" and policy["img-src"] == "data:"
    assert policy["style-src"] == "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
    assert policy["frame-ancestors"] == "'none'" and "<script" not in page.text
    assert page.headers["X-Robots-Tag"] == "noindex, nofollow"


@pytest.mark.parametrize("url, prefix", [
    ("http://localhost:8000/qr/{code}", "/qr"),
    ("https://example.com/pass/show/{code}", "/pass/show"),
    ("https://example.com/{code}", "/qr"),
    ("https://example.com/qr?c={code}", "/qr"),
])
def test_the_page_is_served_at_the_path_of_qr_display_url(url, prefix):
    # Given QR_DISPLAY_URL, when its page's path is read, then it is the URL's own when it ends in /{code}
    assert page_prefix(url) == prefix


def test_a_sample_customers_test_link_opens_a_page_with_a_clearly_labelled_sample_code(
        site, stub_broker, twilio_backend, fake_twilio):
    # Given a test send of a campaign whose audience is empty: the message of "Sample Customer"
    campaign_id = make_campaign()
    trial = send_test_message(campaign_id, to="+12125550199")
    assert trial.customer_id is None

    # When the marketer opens the short link in the body Twilio was given
    [sent] = fake_twilio.messages
    [link] = LINK.findall(sent["body"])
    answer = site.get(path_of(link))

    # Then it is the customer's page as a customer sees it, but its code labelled a sample
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert f'<div class="code">{SAMPLE_CODE}</div>' in answer.text
    assert "Sample: a customer sees their own code here. This one is not valid at the checkout." in answer.text
    assert "<title>Your code (sample)</title>" in answer.text
    [image] = IMAGE.findall(answer.text)
    assert decode_qr_png(base64.b64decode(image)) == [SAMPLE_CODE]
    # With the page's own headers, no click counted, and no customer's code shown
    assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert answer.headers["Cache-Control"] == "no-store" and answer.headers["X-Robots-Tag"] == "noindex, nofollow"
    assert Click.select().count() == 0
    # And the same code as a QR page is a customer's or nobody's: the sample is not served there
    assert site.get("/qr/SAMPLE%200000").status_code == 404
