"""The password policy for new passwords (registration, ``vibebox user create-admin``).

Following OWASP ASVS 4 (2.1) and NIST SP 800-63B: a length floor, no composition rules,
refuse what is common or guessable.

- at least ``MIN_LENGTH`` (12) characters;
- at most ``MAX_BYTES`` (72) bytes of UTF-8: bcrypt reads no more, and we refuse rather than
  silently ignore the rest (no pre-hashing: the stored hashes stay plain bcrypt);
- not the username, the email address or its local part;
- zxcvbn (a password-strength estimator with lists of the most common passwords, words,
  names, keyboard patterns, dates and l33t variants; the user's username and email count as
  words too) must rate it at least ``MIN_SCORE`` (3 of 4: "safely unguessable", about 10^8
  guesses or more). ``password123``, ``12345678``, ``qwertyuiop12`` and the like fail.
"""

from __future__ import annotations

MIN_LENGTH = 12
MAX_BYTES = 72
MIN_SCORE = 3


def password_problems(
    password: str, *, username: str | None = None, email: str | None = None
) -> list[str]:
    """Why ``password`` is not acceptable, as messages for the ``password`` field ([] if ok)."""
    if len(password) < MIN_LENGTH:
        return [f"Must be at least {MIN_LENGTH} characters long."]
    if len(password.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        return [
            f"Must be at most {MAX_BYTES} bytes long (UTF-8; letters outside ASCII take 2-4 "
            "bytes each)."
        ]
    personal = [v.strip() for v in (username, email) if v and v.strip()]
    if email and "@" in email:
        personal.append(email.strip().rpartition("@")[0])
    folded = password.strip().casefold()
    if any(folded == value.casefold() for value in personal):
        return ["Must not be your username or email address."]

    from zxcvbn import zxcvbn

    result = zxcvbn(password, user_inputs=[*personal, "vibebox"], max_length=MAX_BYTES)
    if result["score"] < MIN_SCORE:
        feedback = result.get("feedback") or {}
        hint = " ".join(
            part
            for part in [feedback.get("warning") or "", *feedback.get("suggestions", [])]
            if part
        )
        message = "Too common or too easy to guess."
        return [f"{message} {hint}".strip()]
    return []
