"""Short links: each message carries a link of its own (one per campaign and customer).

The code in a message's link is what makes its text unique, so that reconciliation at
Twilio can tell two campaigns' messages to one person apart, and it tells the web process
which campaign a click belongs to. It leads to the customer's QR-code page.
"""

from __future__ import annotations

import base64
import secrets

#: Crockford's base-32 alphabet: no I, L, O or U, so a code read aloud or retyped survives.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: 8 characters, 40 bits: guessing one live code takes about 10^12 / (live codes) tries.
LINK_CODE_LENGTH = 8
#: The longest code the template check assumes when it proves a template can fit.
SAMPLE_LINK_CODE = "X" * LINK_CODE_LENGTH


#: RFC 4648 base 32 onto Crockford's alphabet: 5 random bytes are exactly 8 characters.
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", ALPHABET)


def new_link_code() -> str:
    """A random code for one message's short link (unique by the database's index)."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii").translate(_TO_CROCKFORD)


def short_url(short_url_base: str, code: str) -> str:
    return f"{short_url_base.rstrip('/')}/{code}"
