"""The OS keyring (service `mailctl`, user `<profile>/<kind>`). Secrets longer than
PART_CHARS are split into numbered parts and joined transparently: Windows Credential
Manager holds at most 2560 bytes (1280 UTF-16 characters), and splitting on every platform
keeps one code path that the tests here exercise."""

from __future__ import annotations

from mailctl.errors import SecretStoreUnavailable
from mailctl.secrets.base import check_kind

SERVICE = "mailctl"
PART_CHARS = 1200
PARTS_MARKER = "mailctl-parts:"

REMEDIES = (
    "set secret_command in the profile (e.g. 'pass show mail/NAME'), or export "
    "MAILCTL_SECRET_<PROFILE>_<KIND>, or start an unlocked keyring "
    "(e.g. gnome-keyring-daemon inside dbus-run-session) or choose one with PYTHON_KEYRING_BACKEND"
)


class KeyringStore:
    name = "keyring"
    writable = True

    def __init__(self, service: str = SERVICE, part_chars: int = PART_CHARS) -> None:
        self.service = service
        self.part_chars = part_chars

    def _call(self, what: str, fn, *args):
        import keyring.errors

        try:
            return fn(*args)
        except keyring.errors.PasswordDeleteError:
            raise
        except keyring.errors.NoKeyringError:
            raise SecretStoreUnavailable(f"no usable keyring backend to {what} the secret", hint=REMEDIES) from None
        except keyring.errors.KeyringLocked:
            raise SecretStoreUnavailable(f"the keyring is locked; cannot {what} the secret", hint="unlock it, or " + REMEDIES) from None
        except keyring.errors.KeyringError as exc:
            raise SecretStoreUnavailable(f"the keyring failed to {what} the secret ({type(exc).__name__})", hint=REMEDIES) from None
        except Exception as exc:  # D-Bus missing, Secret Service not running, ...
            raise SecretStoreUnavailable(
                f"the keyring is not usable here ({type(exc).__name__}); cannot {what} the secret", hint=REMEDIES
            ) from None

    def backend_name(self) -> str:
        """The keyring backend in use ('SecretService Keyring', 'macOS Keyring', ...), for
        mailctl -v; 'unknown backend' when keyring cannot say."""
        try:
            import keyring

            backend = keyring.get_keyring()
            return str(getattr(backend, "name", None) or type(backend).__name__)
        except Exception:  # only a description: never fail a lookup over it
            return "unknown backend"

    def _user(self, profile: str, kind: str, part: int | None = None) -> str:
        base = f"{profile}/{check_kind(kind)}"
        return base if part is None else f"{base}/part{part}"

    def get(self, profile: str, kind: str) -> str | None:
        import keyring

        head = self._call("read", keyring.get_password, self.service, self._user(profile, kind))
        if head is None or not head.startswith(PARTS_MARKER):
            return head
        count = int(head[len(PARTS_MARKER):])
        parts = []
        for i in range(1, count + 1):
            part = self._call("read", keyring.get_password, self.service, self._user(profile, kind, i))
            if part is None:
                raise SecretStoreUnavailable(
                    f"the keyring entry {self._user(profile, kind)} is incomplete (part {i} of {count} missing)",
                    hint=f"store the secret again for profile {profile!r}",
                )
            parts.append(part)
        return "".join(parts)

    def set(self, profile: str, kind: str, value: str) -> None:
        import keyring

        old_count = self._part_count(profile, kind)
        if _utf16_units(value) <= self.part_chars and not value.startswith(PARTS_MARKER):
            self._call("store", keyring.set_password, self.service, self._user(profile, kind), value)
            self._delete_parts(profile, kind, 1, old_count)
            return
        chunks = _split_utf16(value, self.part_chars)
        # Parts first, head last: a reader never sees a head pointing at missing parts.
        for i, chunk in enumerate(chunks, 1):
            self._call("store", keyring.set_password, self.service, self._user(profile, kind, i), chunk)
        self._call("store", keyring.set_password, self.service, self._user(profile, kind), f"{PARTS_MARKER}{len(chunks)}")
        self._delete_parts(profile, kind, len(chunks) + 1, old_count)

    def delete(self, profile: str, kind: str) -> bool:
        import keyring
        import keyring.errors

        count = self._part_count(profile, kind)
        try:
            self._call("delete", keyring.delete_password, self.service, self._user(profile, kind))
            found = True
        except keyring.errors.PasswordDeleteError:
            found = False
        self._delete_parts(profile, kind, 1, count)
        return found

    def _part_count(self, profile: str, kind: str) -> int:
        import keyring

        head = self._call("read", keyring.get_password, self.service, self._user(profile, kind))
        if head and head.startswith(PARTS_MARKER):
            try:
                return int(head[len(PARTS_MARKER):])
            except ValueError:
                return 0
        return 0

    def _delete_parts(self, profile: str, kind: str, start: int, end: int) -> None:
        import keyring
        import keyring.errors

        for i in range(start, end + 1):
            try:
                self._call("delete", keyring.delete_password, self.service, self._user(profile, kind, i))
            except keyring.errors.PasswordDeleteError:
                pass


def _utf16_units(text: str) -> int:
    """Length as Windows counts it: characters outside the BMP take two UTF-16 units."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _split_utf16(text: str, limit: int) -> list[str]:
    """Chunks of at most `limit` UTF-16 units, never splitting a character."""
    chunks, start, units = [], 0, 0
    for i, ch in enumerate(text):
        width = 2 if ord(ch) > 0xFFFF else 1
        if units + width > limit and i > start:
            chunks.append(text[start:i])
            start, units = i, 0
        units += width
    chunks.append(text[start:])
    return chunks
