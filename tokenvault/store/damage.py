"""What is wrong with a LevelDB directory, told without a key or a value: which file, what kind.

Rules:
- A `Damage` names one file (a base name: `000005.ldb`, `MANIFEST-000004`, `CURRENT`) and a
  reason that is one of LevelDB's known phrases (`block checksum mismatch`, KNOWN_REASONS) or
  just the kind of status; LevelDB messages are never passed on (they may carry paths, and in
  principle key bytes).
- Read-only: nothing here changes the directory, except `move_aside`, which renames it and never
  deletes a file.
- What LevelDB cannot notice is checked here before it opens (docs/operations.md, "Damaged
  stores"): a directory with files but no CURRENT (LevelDB would start a new, empty database
  over the old files and delete them), a MANIFEST whose last record is cut (LevelDB silently
  forgets the tables it names, then deletes them) and a write-ahead log whose last record is cut
  (LevelDB drops it silently; under its fsync contract that record was never synced, so it is a
  notice, not damage).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tokenvault.store.storage import StorageError

# LevelDB's log format (db/log_format.h): 32 KiB blocks of records, each with a 7-byte header
# (crc32c: 4, length: 2, type: 1); a block's last < 7 bytes are zero padding.
LOG_BLOCK_BYTES = 32 * 1024
LOG_HEADER_BYTES = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
LEVELDB_INFO_LOG_TAIL_BYTES = 16 * 1024  # how much of LevelDB's own LOG is searched for a file
# LevelDB's own words for what went wrong (util/status, db/log_reader, table/, db/version_set,
# and the strerror texts of the POSIX env), longest first where one holds another.
KNOWN_REASONS = (
    "CURRENT points to a non-existent file",
    "CURRENT file does not end with newline",
    "not an sstable (bad magic number)",
    "block checksum mismatch",
    "no meta-nextfile entry in descriptor",
    "no meta-lognumber entry in descriptor",
    "no last-sequence-number entry in descriptor",
    "does not match existing comparator",
    "missing start of fragmented record",
    "partial record without end",
    "unknown record type",
    "bad record length",
    "checksum mismatch",
    "missing files",
    "bad block contents",
    "bad block handle",
    "bad entry in block",
    "truncated block read",
    "corrupted compressed block contents",
    "corrupted internal key",
    "No space left on device",
    "Input/output error",
    "Invalid argument",
    "Permission denied",
    "No such file or directory",
    "Not a directory",
    "Read-only file system",
    "Too many open files",
)
_STATUS_KINDS = (("Corruption", "corruption"), ("IO error", "io error"))

_FILE_NAME = re.compile(r"(?:^|[/\s'])(\d{6,}\.(?:log|ldb|sst)|MANIFEST-\d{6,}|CURRENT)\b")
_TABLE_LINE = re.compile(r"^\s*(\d+):\d+\['(.*)' @ \d+ : \d+ \.\. '(.*)' @ \d+ : \d+\]$")
_ESCAPED_BYTE = re.compile(rb"\\x([0-9a-f]{2})")


@dataclass(frozen=True, slots=True)
class Damage:
    """A store LevelDB cannot be trusted with: the file at fault and what is wrong with it."""

    file: str  # base name, or "unknown"
    reason: str  # a short phrase, no key, value or path


@dataclass(frozen=True, slots=True)
class LogTail:
    """A write-ahead log whose last record is cut: LevelDB drops those bytes when it opens."""

    file: str
    bytes_dropped: int


def reason_of(message: str) -> str:
    """LevelDB's status text reduced to a reason it is known to give (`Corruption: bad record
    length` -> `bad record length`); any other text becomes the status kind alone
    (`corruption`, `io error`), so that nothing LevelDB quoted (a path, a key) passes on."""
    for phrase in KNOWN_REASONS:
        if phrase in message:
            return phrase
    for prefix, kind in _STATUS_KINDS:
        if message.startswith(prefix):
            return kind
    return "unknown"


def file_named(text: str) -> str | None:
    """The last LevelDB file name in `text` (a status message or a line of LevelDB's LOG)."""
    found = _FILE_NAME.findall(text)
    return found[-1] if found else None


def status_text(error: BaseException) -> str:
    """A plyvel error's status text (plyvel passes LevelDB's status as bytes)."""
    argument = error.args[0] if error.args else ""
    if isinstance(argument, bytes):
        return argument.decode("utf-8", "replace")
    return str(argument)


def damage_from_error(path: Path, error: BaseException, *, at_open: bool = False) -> Damage:
    """The Damage a plyvel error reports: the file its message names; at open, else the last
    file LevelDB's own LOG (new at every open) named while it found the problem (a dropped log
    record), else the MANIFEST (LevelDB logs nothing when it fails to read its MANIFEST)."""
    text = status_text(error)
    file = file_named(text)
    if file is None and at_open:
        file = _file_in_info_log(path) or _current_manifest(path)
    return Damage(file=file or "unknown", reason=reason_of(text))


def _current_manifest(path: Path) -> str | None:
    try:
        return file_named(" " + (path / "CURRENT").read_text("ascii").strip())
    except (OSError, UnicodeDecodeError):
        return None


def _file_in_info_log(path: Path) -> str | None:
    """The file of the last `dropping` or `Corruption` line in LevelDB's own LOG."""
    try:
        with open(path / "LOG", "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - LEVELDB_INFO_LOG_TAIL_BYTES))
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "dropping" in line or "Corruption" in line:
            name = file_named(line)
            if name is not None:
                return name
    return None


def inspect_before_open(path: Path) -> tuple[Damage | None, list[LogTail]]:
    """What LevelDB would miss when opening `path`: Damage that must not be opened, and the
    write-ahead logs whose last record LevelDB will drop (a notice)."""
    try:
        names = sorted(os.listdir(path))
    except OSError:  # missing: a new store; unreadable: LevelDB says why
        return None, []
    leveldb_files = [
        n for n in names if file_named(" " + n) is not None or n.startswith("MANIFEST")
    ]
    if not leveldb_files:
        return None, []  # a new store
    if "CURRENT" not in names:
        return Damage(file="CURRENT", reason="missing"), []
    manifest = _current_manifest(path)
    if manifest is not None and (path / manifest).is_file():
        scan = scan_log(path / manifest)
        if scan.bad_record or scan.bytes_cut:
            return Damage(file=manifest, reason=_scan_reason(scan)), []
    # else: LevelDB reports a CURRENT pointing nowhere itself ("non-existent file").
    tails: list[LogTail] = []
    for name in names:
        if name.endswith(".log"):
            scan = scan_log(path / name)
            if scan.bad_record:
                return Damage(file=name, reason=_scan_reason(scan)), []
            if scan.bytes_cut:
                tails.append(LogTail(file=name, bytes_dropped=scan.bytes_cut))
    return None, tails


def _scan_reason(scan: LogScan) -> str:
    return "bad record header" if scan.bad_record else "last record cut"


@dataclass(frozen=True, slots=True)
class LogScan:
    """How a LevelDB log-format file (a .log or a MANIFEST) ends."""

    bytes_cut: int  # bytes after the last whole record: a record cut short, or unfinished
    bad_record: bool  # a header that cannot be (a length beyond its block, an unknown type)


def scan_log(file: Path) -> LogScan:
    """Walk the record headers of a log-format file (no checksums: LevelDB's paranoid checks
    verify those and report a mismatch). LevelDB itself drops, silently, a record cut at the
    end of the file, and a bad header in a file's last block together with all behind it."""
    try:
        data = file.read_bytes()
    except OSError:
        return LogScan(bytes_cut=0, bad_record=False)
    size = len(data)
    position = whole_until = 0
    fragmented = False
    while position < size:
        block_left = LOG_BLOCK_BYTES - position % LOG_BLOCK_BYTES
        if block_left < LOG_HEADER_BYTES:  # the block's zero trailer
            position += block_left
            if not fragmented:
                whole_until = min(position, size)
            continue
        if position + LOG_HEADER_BYTES > size:
            break  # a header cut short
        length = data[position + 4] | data[position + 5] << 8
        record_type = data[position + 6]
        if record_type == 0 and length == 0:
            break  # zeroes where a record should be: a cut (preallocated) tail
        if length > block_left - LOG_HEADER_BYTES or record_type not in (1, 2, 3, 4):
            return LogScan(bytes_cut=size - whole_until, bad_record=True)
        end = position + LOG_HEADER_BYTES + length
        if end > size:
            break  # a record cut short
        position = end
        if record_type in (_FULL, _LAST):
            fragmented = False
            whole_until = position
        elif record_type == _FIRST:
            fragmented = True
    return LogScan(bytes_cut=size - whole_until, bad_record=False)


def tables_holding(sstables: str, after: bytes | None, key: bytes | None = None) -> list[str]:
    """Table files (`000005.ldb`) that may hold `key`, or the keys right after `after`, from
    LevelDB's `leveldb.sstables` property; the keys stay in memory, never in the answer."""
    ranges: list[tuple[str, bytes, bytes]] = []
    for line in sstables.splitlines():
        match = _TABLE_LINE.match(line)
        if match is not None:
            number, smallest, largest = match.groups()
            ranges.append((f"{int(number):06d}.ldb", _unescape(smallest), _unescape(largest)))
    if key is not None:
        return [name for name, low, high in ranges if low <= key <= high]
    low_bound = after if after is not None else b""
    around = [name for name, low, high in ranges if low <= low_bound < high]
    if around:
        return around
    later = [(low, name) for name, low, _ in ranges if low > low_bound]
    return [min(later)[1]] if later else []


def _unescape(text: str) -> bytes:
    """LevelDB's EscapeString undone: printable characters as they are, others as \\xNN."""
    raw = text.encode("latin-1", "replace")
    return _ESCAPED_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]), raw)


def move_aside(path: Path, now: datetime | None = None) -> Path:
    """Rename the store directory to `<path>.damaged-<UTC time>`; nothing is deleted. Raises
    StorageError when it cannot be renamed."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{suffix}")
    try:
        path.rename(target)
    except OSError as error:
        raise StorageError(f"cannot move the damaged store aside: {error.strerror}") from None
    return target
