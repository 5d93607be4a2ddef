"""The API key file (hashes only) and the key ring a service loads at start.

The file is a JSON list of :class:`strata.apikeys.KeyRecord` (see :func:`dump_records`), mode
0600, replaced atomically on every change. ``strata keys`` maintains it; services read it
together with ``STRATA_API_KEYS`` through :func:`load_keyring`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from strata.serving.apikeys import (
    KeyFileError,
    KeyRecord,
    KeyRing,
    demo_record,
    dump_records,
    parse_records,
)
from strata.settings import Settings

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: writers are not serialised
    fcntl = None  # type: ignore[assignment]

ENV_SOURCE = "STRATA_API_KEYS"


class KeyFile:
    """A JSON file of key records: read, add, revoke.

    Changes are read-modify-write under an exclusive lock on ``<path>.lock`` (so two
    ``strata keys create`` at once both land) and replace the file atomically with mode 0600.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()

    def read(self) -> list[KeyRecord]:
        """The records in the file; none when it does not exist.

        Raises:
            KeyFileError: the file is unreadable, not JSON, or holds an invalid record.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise KeyFileError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
        return parse_records(text, str(self.path))

    def add(self, record: KeyRecord) -> None:
        """Add ``record`` to the file (created with its folder when missing).

        Raises:
            KeyFileError: a key of that name exists already, or the file is invalid.
        """
        with self._locked():
            records = self.read()
            if any(r.name == record.name for r in records):
                raise KeyFileError(f"{self.path}: an API key named {record.name!r} exists already")
            self._write([*records, record])

    def revoke(self, name: str) -> bool:
        """Remove the key named ``name``; returns False when there is none.

        Raises:
            KeyFileError: the file is invalid.
        """
        if not self.path.exists():
            return False
        with self._locked():
            records = self.read()
            kept = [r for r in records if r.name != name]
            if len(kept) == len(records):
                return False
            self._write(kept)
            return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, records: list[KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file with mode 0600, so it is never readable by others
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dump_records(records))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def load_keyring(settings: Settings, *, demo: bool = False) -> KeyRing:
    """The keys a service accepts: the key file's, ``STRATA_API_KEYS``'s, and with ``demo``
    the public :data:`strata.apikeys.DEMO_KEY`.

    Args:
        settings: runtime settings (``keys_path()``, ``api_keys``).
        demo: also accept the demo key (demo mode only: the key is public).

    Raises:
        KeyFileError: a source is invalid, or a name (or key) appears in two sources.
    """
    sources: list[tuple[str, list[KeyRecord]]] = []
    path = settings.keys_path()
    if path is not None:
        key_file = KeyFile(path)
        sources.append((str(key_file.path), key_file.read()))
    if settings.api_keys is not None:
        sources.append((ENV_SOURCE, parse_records(settings.api_keys, ENV_SOURCE)))
    if demo:
        sources.append(("demo mode", [demo_record()]))

    origin: dict[str, str] = {}
    records: list[KeyRecord] = []
    for source, found in sources:
        for record in found:
            if record.name in origin:
                raise KeyFileError(
                    f"API key {record.name!r} is defined in both {origin[record.name]} and "
                    f"{source}; rename or remove one"
                )
            origin[record.name] = source
            records.append(record)
    try:
        return KeyRing(records)
    except ValueError as exc:  # the same key under two names
        raise KeyFileError(str(exc)) from exc
