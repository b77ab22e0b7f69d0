"""The live status page of GET /ui: one HTML document (ui.html, shipped with the package) whose
inline script polls this peer's admin JSON endpoints and renders the ring, the peers and every
owner's replicas.

Rules:
- The document is read once at start and answered as is: no templating, no value, key or
  token in it (its script fetches what it shows, with the credentials the browser holds).
- The page runs under a strict Content-Security-Policy: nothing but its own inline <style> and
  <script>, allowed by their SHA-256 (computed here from the shipped file, so an edited page
  stays allowed), fetches to its own origin only, no frame, form or base URL; and
  `Cache-Control: no-store`, so a browser keeps no copy of an admin page.
- Who may see it (the admin key, Bearer or Basic) is api.py's business, not this module's.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from tokenvault.http.messages import Response

UI_ASSET = "ui.html"
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_INLINE = {
    "script": re.compile(r"<script>(.*?)</script>", re.DOTALL),
    "style": re.compile(r"<style>(.*?)</style>", re.DOTALL),
}


def content_security_policy(document: str) -> str:
    """The policy that allows exactly the document's inline <script> and <style> blocks."""
    sources: dict[str, str] = {}
    document = _COMMENT.sub("", document)  # a comment that names a tag holds no block
    for kind, pattern in _INLINE.items():
        hashes = [
            "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"
            for block in pattern.findall(document)
        ]
        sources[kind] = " ".join(hashes) or "'none'"
    return (
        "default-src 'none'; "
        f"script-src {sources['script']}; "
        f"style-src {sources['style']}; "
        "connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


@dataclass(frozen=True, slots=True)
class StatusPage:
    response: Response

    @classmethod
    def load(cls) -> StatusPage:
        """The page as the package ships it, with its headers: built once, answered as is."""
        document = (resources.files("tokenvault.http") / UI_ASSET).read_text(encoding="utf-8")
        headers = (
            ("content-security-policy", content_security_policy(document)),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        )
        return cls(
            Response(
                status=200,
                body=document.encode("utf-8"),
                content_type="text/html; charset=utf-8",
                headers=headers,
            )
        )
