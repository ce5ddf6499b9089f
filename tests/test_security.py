"""No credentials in the repository: every file git tracks (or would add) is scanned for keys, tokens and passwords.

The scanner's own tests plant each kind of secret in a temporary file and check that it is found, so a pattern that
silently stopped matching fails here instead of passing the repository scan. The planted strings are assembled at
run time, so this file itself never contains a match.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_SCANNED_BYTES = 5 * 1024 * 1024  # larger tracked files would be data, not configuration or code

# A value counts as a literal secret when it is long and made of token characters only; templates and expressions
# (``$TOKEN``, ``{token}``, ``<your token>``, ``secrets.token_hex(32)``) contain other characters and do not match.
_LITERAL = r"[A-Za-z0-9+/_\-.=]{16,}"
_SECRET_NAME = r"[A-Za-z0-9_\-]*(?:password|passwd|secret|token|api_?key|access_?key)"

PATTERNS: dict[str, re.Pattern[str]] = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}\b", re.IGNORECASE),
    "private key block": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b"),
    "Ray auth token assigned literally": re.compile(
        r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?[A-Za-z0-9_\-]{16,}"),
    "bearer token literal": re.compile(r"Bearer\s+[A-Fa-f0-9]{32,}\b|Bearer\s+[A-Za-z0-9_\-]{40,}"),
    # name = "literal" / name: 'literal' (Python, YAML, JSON, TOML)
    "quoted secret assignment": re.compile(
        rf"\b{_SECRET_NAME}[\"']?\s*[=:]\s*[\"']{_LITERAL}[\"']", re.IGNORECASE),
    # NAME=literal in shell, .env and INI files
    "unquoted secret assignment": re.compile(rf"\b{_SECRET_NAME}=(?![\"'$]){_LITERAL}(?:\s|$)", re.IGNORECASE),
}


@dataclass(frozen=True)
class Finding:
    """One suspected credential: where it is and which pattern found it (the value itself is not repeated)."""

    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind}"


def scan_text(text: str, path: str) -> list[Finding]:
    """Every pattern match in ``text``, one finding per (line, kind)."""
    findings: set[Finding] = set()
    for kind, pattern in PATTERNS.items():
        for match in pattern.finditer(text):
            findings.add(Finding(path, text.count("\n", 0, match.start()) + 1, kind))
    return sorted(findings, key=lambda finding: (finding.path, finding.line, finding.kind))


def scan_file(path: Path, display: str | None = None) -> list[Finding]:
    """Scan one file; binary files (a NUL byte in the first 8 KiB) and very large files are skipped."""
    if path.stat().st_size > MAX_SCANNED_BYTES:
        return []
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return []
    return scan_text(data.decode("utf-8", errors="replace"), display or str(path))


def repository_files(root: Path) -> list[str]:
    """Files git tracks, plus new files it would add (not ignored): a secret is caught before its first commit."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (root / name).is_file()})


def test_repository_has_no_credentials() -> None:
    files = repository_files(REPO)
    assert len(files) > 20 and "pyproject.toml" in files and "cluster.yaml" in files
    findings = [finding for name in files for finding in scan_file(REPO / name, name)]
    assert not findings, "possible credentials in the repository:\n" + "\n".join(map(str, findings))


# Each planted example is assembled from pieces so that this source file contains no match itself.
PLANTED: dict[str, str] = {
    "AWS access key id": "aws_access_key_id = " + "AKIA" + "IOSFODNN7" + "EXAMPLE" + "\n",
    "AWS secret access key": "aws_secret_access_key=" + "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCYEXAMPLEKEY" + "\n",
    "private key block": "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----\n",
    "GitHub token": "remote = https://" + "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2 + "@github.com/x/y\n",
    "Ray auth token assigned literally": "export RAY_AUTH_" + "TOKEN=" + "3f9c2a" * 6 + "\n",
    "bearer token literal": 'headers = {"Authorization": "Bear' + 'er ' + "9e" * 20 + '"}\n',
    "quoted secret assignment": "db_pass" + 'word = "' + "correct-horse-battery-staple" + '"\n',
    "unquoted secret assignment": "API_" + "TOKEN=" + "sk_live_" + "0123456789abcdef" + "\n",
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_scanner_finds_a_planted_secret(kind: str, tmp_path: Path) -> None:
    planted = tmp_path / "config.env"
    planted.write_text("# harmless first line\n" + PLANTED[kind])
    findings = scan_file(planted)
    assert Finding(str(planted), 2, kind) in findings, findings


def test_scanner_fails_the_repository_check_on_a_planted_file(tmp_path: Path) -> None:
    """The same listing + scan as the repository test, on a throwaway git repository holding one secret."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "clean.py").write_text("token_path = '~/.ray/auth_token'\n")
    (tmp_path / "leak.yaml").write_text("setup:\n  - " + PLANTED["Ray auth token assigned literally"])
    (tmp_path / ".gitignore").write_text("ignored.env\n")
    (tmp_path / "ignored.env").write_text(PLANTED["GitHub token"])  # git would never add it: not scanned
    files = repository_files(tmp_path)
    assert files == [".gitignore", "clean.py", "leak.yaml"]
    findings = [finding for name in files for finding in scan_file(tmp_path / name, name)]
    # The generic NAME=literal pattern may report the same line too; only the leaking file may be named.
    assert {finding.path for finding in findings} == {"leak.yaml"}
    assert "leak.yaml:2: Ray auth token assigned literally" in map(str, findings)


@pytest.mark.parametrize("harmless", [
    "self.token = secrets.token_hex(32)",
    'headers={"Authorization": f"Bearer {self.token}"}',
    "export RAY_AUTH_TOKEN_PATH=~/.ray/auth_token",
    'RAY_AUTH_TOKEN="$(cat ~/.ray/auth_token)"',
    'token_path = "~/.ray/auth_token"',
    "password = os.environ['DB_PASSWORD']",
    'secret: "<your secret here>"',
    "the token authentication stays on",
])
def test_scanner_ignores_references_to_secrets(harmless: str) -> None:
    assert scan_text(harmless, "example") == []
