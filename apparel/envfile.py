"""The one reader and writer of `.env`: used by apparel/config.py, the secret writer and the Makefile.

Standard library only, so the Makefile can run it with the system Python before the venv exists:

    python3 apparel/envfile.py .env STATE_DIR     # prints the value (nothing when unset)

The syntax is the common dotenv one (as python-dotenv and Docker Compose read it): `KEY=value`,
an optional `export ` prefix, values in single or double quotes, `#` comments (after an unquoted
value only when preceded by a space). The last assignment of a key wins. An empty value (`KEY=`,
`KEY=""`) means unset, for every reader alike: that is what keeps the secret writer from treating
`KEY=""` as set while the others treat it as empty, or from missing `export KEY=…` and appending a
second, different key.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*(.*?)\s*$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def parse_line(line: str) -> tuple[str, str] | None:
    """(key, value) of an assignment line, None for comments, blank and malformed lines."""
    match = _LINE.match(line)
    if not match:
        return None
    key, raw = match.groups()
    if raw[:1] in ("'", '"'):
        quote = raw[0]
        end = raw.find(quote, 1)
        while quote == '"' and end > 0 and raw[end - 1] == "\\":
            end = raw.find(quote, end + 1)
        if end < 0:
            return None  # an unclosed quote: ignored, like python-dotenv does
        value = raw[1:end]
        if quote == '"':
            value = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), value)
        return key, value
    return key, re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def read_env_file(path: Path) -> dict[str, str]:
    """Every key the file assigns a non-empty value (the last assignment wins; empty means unset)."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        if parsed := parse_line(line):
            key, value = parsed
            if value:
                values[key] = value
            else:
                values.pop(key, None)
    return values


def write_private(path: Path, text: str) -> None:
    """Replace `path` atomically by a file with `text`, readable by its owner only (mode 600 from the
    first byte: the temporary file is created so, then renamed over the old one)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates mode 600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_values(path: Path, values: dict[str, str], template: Path | None = None) -> None:
    """Set keys in the env file (created from `template` when missing), keeping every other line:
    a key's last assignment line is rewritten in place, a new key is appended."""
    if path.exists():
        lines = path.read_text().splitlines()
    else:
        lines = template.read_text().splitlines() if template and template.exists() else []
    for name, value in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_\-.~+/=:@%]*", value):
            raise ValueError(f"{name}: generated values must not need quoting")
        where = [i for i, line in enumerate(lines) if (parse_line(line) or ("",))[0] == name]
        if where:
            lines[where[-1]] = f"{name}={value}"
        else:
            lines.append(f"{name}={value}")
    write_private(path, "\n".join(lines) + "\n")


if __name__ == "__main__":
    # The Makefile's reading: `python3 apparel/envfile.py FILE KEY`.
    print(read_env_file(Path(sys.argv[1])).get(sys.argv[2], ""))
