"""The customer's QR-code page: where every message's short link leads (``QR_DISPLAY_URL``).

A customer shows this page at the till, so it is made for a phone held up to a scanner: a
viewport for phones, the QR code as large as the screen allows on a white ground (also in
dark mode), and the code in text beneath it for the cashier to type when a scanner fails.

The image is a PNG drawn by segno and inlined in the page as a ``data:`` URI, rather than
an SVG or a second route: the page is one request and one lookup, complete once loaded (a
customer who opens it at home still has the code at a till with no signal), every phone
can save it to its photos by a long press (an SVG often cannot be saved that way), and its
modules stay sharp at any size (``image-rendering: pixelated``). The page names nobody:
anyone holding the link sees a code and nothing else.

Answers carry the web process's headers (``webguard.SECURITY_HEADERS``: no caching, so a
code an import changed is never shown stale) with a Content-Security-Policy that allows
the inlined image and the page's one stylesheet (by its hash) and nothing else, and
``X-Robots-Tag: noindex``. A code outside the alphabet a QR code may have, or one no
customer has, gets a 404 page written for a person. A test send made for a sample customer
(nobody in the audience would get the message) has no customer's code: its link opens the
same page with ``SAMPLE_CODE``, titled and labelled as a sample (``sample_response``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from urllib.parse import urlsplit

import segno
from flask import Flask, Response

from models import QRCode

#: A customer's QR code as the import takes it (``customer_rows``: 4 to 32 letters, digits,
#: ``-`` or ``_``); anything else is 404 before any query.
QR_CODE = re.compile(r"[A-Za-z0-9_-]{4,32}")
#: What a sample customer's page shows (a test send with nobody in the audience): a space
#: is outside ``QR_CODE``, so no customer's code can ever be this one.
SAMPLE_CODE = "SAMPLE 0000"
#: The path the page is served at when ``QR_DISPLAY_URL`` does not end in ``/{code}``.
DEFAULT_PREFIX = "/qr"
#: The image's width in pixels, about: each module is drawn this many pixels over the
#: symbol's size (at least 4), so small codes are as crisp as large ones.
IMAGE_PX = 360

STYLE = (
    "html,body{margin:0;background:#fff;color:#111;font-family:system-ui,-apple-system,sans-serif}"
    "main{min-height:100vh;display:flex;flex-direction:column;align-items:center;justify-content:center;"
    "padding:4vw;box-sizing:border-box;text-align:center}"
    "img{width:min(88vw,70vh,520px);height:auto;image-rendering:pixelated;background:#fff}"
    ".code{font:700 clamp(1.6rem,8vw,2.6rem)/1.2 ui-monospace,Menlo,Consolas,monospace;letter-spacing:.12em;"
    "margin:1rem 0 .25rem;word-break:break-all;user-select:all}"
    "p{margin:.25rem 0;font-size:1.05rem;color:#444}"
)
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; img-src data:; style-src 'sha256-{STYLE_HASH}'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Robots-Tag": "noindex, nofollow"}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light">
<meta name="robots" content="noindex, nofollow">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<main>
{content}
</main>
</body>
</html>
"""


def page_prefix(qr_display_url: str) -> str:
    """The path the page is served at: ``QR_DISPLAY_URL``'s own when it ends in ``/{code}``
    (the default's ``/qr``), else ``/qr``."""
    path = urlsplit(qr_display_url).path
    if path.endswith("/{code}") and path.count("{code}") == 1 and len(path) > len("/{code}"):
        return path[: -len("/{code}")]
    return DEFAULT_PREFIX


def qr_png(code: str) -> bytes:
    """The code as a PNG QR code, with the standard quiet zone of 4 modules."""
    symbol = segno.make_qr(code, error="m")
    width, _height = symbol.symbol_size(border=4)
    return base64.b64decode(symbol.png_data_uri(scale=max(4, IMAGE_PX // width), border=4).partition(",")[2])


def code_page(code: str, *, sample: bool = False) -> str:
    """The page showing ``code`` (already checked against ``QR_CODE``); ``sample``: the same
    page, titled and labelled as a sample (``SAMPLE_CODE``, a test send's sample customer)."""
    shown = html.escape(code)
    image = "data:image/png;base64," + base64.b64encode(qr_png(code)).decode("ascii")
    content = (f'<img src="{image}" alt="QR code {shown}">\n'
               f'<div class="code">{shown}</div>\n'
               "<p>Show this code at the checkout.</p>")
    if sample:
        content += "\n<p><strong>Sample: a customer sees their own code here. This one is not valid at the checkout.</strong></p>"
    return PAGE.format(title="Your code (sample)" if sample else "Your code", style=STYLE, content=content)


def sample_response() -> Response:
    """The page a sample customer's test link opens: what a customer sees, with
    ``SAMPLE_CODE`` labelled as a sample (served at the link itself: no customer's page has it)."""
    return _html(code_page(SAMPLE_CODE, sample=True), 200)


def not_found_page() -> str:
    content = ("<h1>Code not found</h1>\n"
               "<p>This link does not lead to a code, or the code is no longer valid.</p>\n"
               "<p>Check the link in your message, or ask us at the store.</p>")
    return PAGE.format(title="Code not found", style=STYLE, content=content)


def _html(body: str, status: int) -> Response:
    response = Response(body, status, content_type="text/html; charset=utf-8")
    response.headers.update(PAGE_HEADERS)
    return response


def register(app: Flask, *, qr_display_url: str) -> None:
    """Serve the page on ``app`` at the path of ``qr_display_url`` (a database connection is
    open for the request, as ``web.create_app`` opens one for every request)."""

    @app.get(f"{page_prefix(qr_display_url)}/<code>")
    def qr_code_page(code: str):
        if not QR_CODE.fullmatch(code) or not QRCode.select().where(QRCode.code == code).exists():
            return _html(not_found_page(), 404)
        return _html(code_page(code), 200)
