"""The status page (GET /ui) in a real browser: headless Chromium (Debian's `chromium` package)
opens http://admin:KEY@host:port/ui on a live 3-peer cluster, answers the page's Basic
challenge with the URL's credentials, runs its script (which polls the admin JSON with them),
and the rendered DOM names every peer, every owner and the digests the replicas report; a
screenshot of the expected size is a real PNG that is not blank. Skipped, saying why, where
Chromium is not installed. Plain HTTP only (the browser would have to trust the cluster CA).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster, running_cluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="needs Chromium for the headless browser test (Debian: apt-get install chromium)",
    ),
]

WINDOW = (1280, 900)  # the screenshot's width and height in pixels
VIRTUAL_TIME_BUDGET_MS = 5_000  # the page refreshes every 2 s: at least two refreshes
CHROMIUM_TIMEOUT_S = 90.0
COLOURS_MIN = 16  # a page of text, badges and a ring; a blank one has one colour
DOMINANT_SHARE_MAX = 0.97  # the background's share of the pixels


def chromium(profile: Path, url: str, *options: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on `url`, its profile in `profile`, no proxy (loopback only)."""
    command = [
        "chromium",
        "--headless=new",
        "--no-sandbox",  # the CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        *options,
        url,
    ]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def page_url(cluster: Cluster, peer: str) -> str:
    host, port = cluster.address(peer)
    return f"http://admin:{cluster.admin_key}@{host}:{port}/ui"


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, the rows of pixels) of an 8-bit RGB or RGBA PNG, non-interlaced:
    chunks checked for their CRC, IDAT inflated and every row unfiltered (RFC 2083)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    offset, chunks = 8, []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, (depth, colour_type)
    channels = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    assert len(raw) == height * (stride + 1)
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        method, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        _unfilter(method, line, previous, channels)
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def _unfilter(method: int, line: bytearray, previous: bytearray, channels: int) -> None:
    if method == 0:
        return
    if method == 2:  # Up
        for i in range(len(line)):
            line[i] = (line[i] + previous[i]) & 0xFF
        return
    for i in range(len(line)):
        left = line[i - channels] if i >= channels else 0
        up = previous[i]
        if method == 1:  # Sub
            line[i] = (line[i] + left) & 0xFF
        elif method == 3:  # Average
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        else:  # Paeth
            assert method == 4, method
            corner = previous[i - channels] if i >= channels else 0
            estimate = left + up - corner
            near_left, near_up = abs(estimate - left), abs(estimate - up)
            near_corner = abs(estimate - corner)
            if near_left <= near_up and near_left <= near_corner:
                predictor = left
            elif near_up <= near_corner:
                predictor = up
            else:
                predictor = corner
            line[i] = (line[i] + predictor) & 0xFF


def test_the_status_page_renders_the_ring_and_the_replicas_in_headless_chromium(
    tmp_path: Path,
) -> None:
    with running_cluster(tmp_path / "cluster") as cluster:
        made = httpx.post(
            cluster.url("n2") + "/v1/tokenize",
            headers=cluster.headers("alice"),
            json={"records": [{"ssn": "123-45-6789"}, {"email": "a@example.com"}]},
            timeout=10,
        )
        assert made.status_code == 200
        refused = httpx.get(cluster.url("n1") + "/ui", timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('Basic realm="tokenvault"')

        dom = chromium(tmp_path / "profile-dom", page_url(cluster, "n1"), "--dump-dom").stdout
        owners = {
            owner: httpx.get(
                cluster.url("n1") + f"/v1/admin/owners/{owner}",
                headers=cluster.admin_headers(),
                timeout=10,
            ).json()
            for owner in ("alice", "bob")
        }
        refreshed = re.search(r'<body data-refreshed="(\d+)"', dom)
        assert refreshed is not None and int(refreshed.group(1)) >= 2, dom[-3000:]
        assert '<div id="error" role="alert" class=""></div>' in dom
        assert '<strong id="peer">n1</strong>' in dom
        for peer in cluster.peer_ids:
            assert f'data-peer="{peer}"' in dom, peer
        for owner, view in owners.items():
            assert f'data-owner="{owner}"' in dom, owner
            for replica in view["replicas"]:
                assert replica["digest"] in dom, (owner, replica)
        assert dom.count('class="badge up">up</span>') == len(cluster.peer_ids)
        assert cluster.admin_key not in dom

        shot = tmp_path / "status.png"
        chromium(
            tmp_path / "profile-shot",
            page_url(cluster, "n1"),
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={shot}",
        )
        width, height, rows = png_pixels(shot.read_bytes())
        assert (width, height) == WINDOW
        channels = len(rows[0]) // width
        pixels = Counter(
            row[x : x + channels] for row in rows for x in range(0, len(row), channels)
        )
        assert len(pixels) >= COLOURS_MIN, len(pixels)
        assert pixels.most_common(1)[0][1] / (width * height) <= DOMINANT_SHARE_MAX

        for peer in cluster.peer_ids:  # the key travelled in headers only, never logged
            assert cluster.admin_key not in cluster.log(peer), peer
