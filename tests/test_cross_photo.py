"""Cross-photo logins through the real PAM stack: enrolled from 3 photos, let in by other photos of the
same person, and not by another person's.

pam_exec runs the real faceid-helper; the camera is a folder of real dev/lfw photographs (never the ones
enrolled), faceidd scores them with the shipped model at its shipped threshold. Liveness is off: still
photos are what this test is about (tests/test_liveness.py covers spoofs).
"""

from __future__ import annotations

import pytest
from faceidd_util import enrol, require_model
from test_pam import authenticate, images_folder

from pam_faceid.helper import main as helper

PEOPLE = [("Jacques_Chirac", "Laura_Bush"), ("Lleyton_Hewitt", "Andre_Agassi")]


@pytest.mark.parametrize("person, other", PEOPLE)
def test_other_photos_of_the_enrolled_person_let_them_in_and_another_persons_do_not(
        person, other, faceidd, pam_service, make_user, person_images, tmp_path):
    require_model()
    user = make_user()
    mine, theirs = person_images(person), person_images(other)
    d = faceidd({"liveness": {"mode": "off"}})
    enrol(d.state_dir, user, mine[:3])
    d.start()
    service = pam_service(d.config_path)

    tmp_path.chmod(0o755)
    d.rewrite_config({"camera": {"device": str(images_folder(tmp_path, mine[3:9]))}})
    ok, shown, _ = authenticate(service, user)
    assert ok, d.logs()
    assert shown[-1] == helper.NOTICE_MATCH

    d.rewrite_config({"camera": {"device": str(images_folder(tmp_path, theirs[:6]))}})
    ok, shown, _ = authenticate(service, user)
    assert not ok
    assert helper.NOTICE_MATCH not in shown
