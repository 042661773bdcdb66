"""The proof's child, run by pamproof.prove under ``unshare --mount``: mount the copies, prove, change, prove.

Its own module because it needs both sides: pamproof's checks and pamconf's reading of our PAM lines (for the
stand-in variants), while pamconf imports pamproof; neither imports the other back.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from pam_faceid.pamstack import pamconf
from pam_faceid.pamstack.pamproof import PAM_DIR, SAFE_PATH, STAND_INS, Proof, _authenticate


# ---------------------------------------------------------------- inside the private mount namespace


def _prove_services(names: list[str], spec: dict, stand_ins: bool) -> Proof:
    """Right password accepted, wrong refused, for each service (and its stand-in variants); run side by side."""
    checks: list[tuple[str, str]] = []
    for name in names:
        checks.append((name, ""))
        text = (PAM_DIR / name).read_text()
        for face, report in STAND_INS if stand_ins else ():
            variant = pamconf.with_programs(text, face, report, tuple(spec["helpers"]))
            if variant == text:
                break
            alias = f"faceid-proof-{secrets.token_hex(5)}"
            (PAM_DIR / alias).write_text(variant)
            checks.append((alias, f" with our lines replaced by stand-ins (face line {face}, "
                                  f"password-used line {report})"))
    jobs = [(service, what, password, password == spec["password"]) for service, what in checks
            for password in (spec["password"], spec["password"] + "x")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda job: _authenticate(job[0], spec["user"], spec["uid"], job[2]), jobs))
    for (_service, what, _, right), (ok, reason) in zip(jobs, answers):
        if right and not ok:
            return Proof(False, f"the right password was refused{what} ({reason})")
        if not right and ok:
            return Proof(False, f"a wrong password was accepted{what}: the stack no longer checks passwords")
    extra = ", with the real helper and with stand-ins for it" if len(checks) > len(names) else ""
    return Proof(True, f"proven: a right password is accepted and a wrong one refused{extra}")


def _main() -> int:
    """The child under ``unshare --mount``: mount the copies, prove, change, prove; one JSON line on stdout."""
    spec = json.load(sys.stdin)
    for copy, target in spec["mounts"]:
        subprocess.run(["mount", "--bind", copy, target], check=True, capture_output=True)
    result: dict[str, object] = {}
    if spec["before"]:
        before = _prove_services(spec["before"], spec, stand_ins=False)
        result["before"] = before.__dict__
        if not before.ok:
            print(json.dumps(result))
            return 0
    for name, text in spec["writes"].items():
        (PAM_DIR / name).write_text(text)
    if spec["command"]:
        run = subprocess.run(spec["command"], capture_output=True, text=True,
                             env={"PATH": SAFE_PATH, "DEBIAN_FRONTEND": "noninteractive"})
        if run.returncode:
            result["command"] = (f"{' '.join(spec['command'])} failed: "
                                 f"{run.stderr.strip() or run.stdout.strip()}")
            print(json.dumps(result))
            return 0
    result["after"] = _prove_services(spec["after"], spec, stand_ins=True).__dict__
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
