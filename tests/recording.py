"""A text stream that keeps each write apart, for tests of what is written in one go."""

from __future__ import annotations

import io


class Recording(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)
