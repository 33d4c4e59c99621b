"""Session 25 (mutation B): tests that kill mutants of the secret scrubber, the atomic writers, the settings and
the keypoint reader which the suite let through. Each pins a property a user relies on, checked against values
worked out here, not against the code's own output."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

# --- redact ---------------------------------------------------------------------------------------------------

def test_a_signature_query_value_is_masked(clean_secrets):
    # a presigned URL (S3, Azure SAS) authorises by its signature alone: "sig" is one of the documented names
    text = "GET https://bucket.example/o.png?X-Amz-Signature=9f0e1d2c3b4a&x=1 and ?sv=2&sig=AbC123xyz%3D failed"
    out = clean_secrets.scrub(text)
    assert "9f0e1d2c3b4a" not in out and "AbC123xyz" not in out
    assert "x=1" in out and "sv=2" in out  # other parameters stay readable


def test_a_password_with_an_at_sign_in_free_text_is_masked_whole(clean_secrets):
    # an unregistered address quoted in a message: the user-info runs to the authority's last "@", as URL
    # parsers read it; cut at the first "@" the rest of the password stayed in view
    out = clean_secrets.scrub("cannot reach http://bob:p@ssW0rd9@db.example:8000/x (refused)")
    assert "ssW0rd9" not in out and "bob" not in out
    assert "@db.example:8000/x" in out


def test_chroma_basic_auth_credentials_are_masked_as_sent_too(clean_secrets, monkeypatch):
    import base64

    # Chroma sends CHROMA_CLIENT_AUTH_CREDENTIALS base64-encoded; a header dump quotes that form, not "user:pw"
    monkeypatch.setenv("CHROMA_CLIENT_AUTH_CREDENTIALS", "admin:Sesame-Opens")
    sent = base64.b64encode(b"admin:Sesame-Opens").decode()
    out = clean_secrets.scrub(f"request headers {{'authorization': '{sent}'}} refused; password Sesame-Opens")
    assert sent not in out and "Sesame-Opens" not in out


def test_no_eight_characters_of_a_long_key_survive_a_quote_that_cuts_it(clean_secrets, monkeypatch):
    key = "sk-Q7vXz9KpL2mN4rT8wY6f4Hd"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    # OpenAI's 401 shows the start and end; a gateway cuts the key to its first characters
    out = clean_secrets.scrub(f"Incorrect API key provided: {key[:10]}****{key[-4:]}. Gateway saw {key[:20]}…")
    windows = {key[i:i + 8] for i in range(len(key) - 7)}
    assert not [w for w in windows if w in out], out


def test_a_registered_key_that_spells_words_does_not_mask_the_words_elsewhere(clean_secrets):
    clean_secrets.register_secret("sk-hmrcritic-review-0a1b2c3d")
    out = clean_secrets.scrub("hmrcritic review of group 3: key sk-hmrcritic-review-0a1b2c3d refused")
    assert out.startswith("hmrcritic review of group 3: ")  # the words are no piece of the key's secret part
    assert "0a1b2c3d" not in out


def test_a_secret_of_exactly_the_minimum_length_is_masked(clean_secrets):
    secret = "Zq9#xW"[: clean_secrets.MIN_SECRET_LEN]
    assert len(secret) == clean_secrets.MIN_SECRET_LEN
    clean_secrets.register_secret(secret)
    assert secret not in clean_secrets.scrub(f"password {secret} refused")


def test_scrub_tree_masks_a_secret_used_as_a_key(clean_secrets, monkeypatch):
    # a trace's metadata keyed by the header value (a dict of keys to their rate limits)
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-TREEKEY-5a6b7c8d9e")
    out = clean_secrets.scrub_tree({"limits": {"sk-TREEKEY-5a6b7c8d9e": 3}})
    assert "sk-TREEKEY-5a6b7c8d9e" not in json.dumps(out)


@pytest.mark.parametrize("char", ["\x1b", "\u200e", "\u200f", "\u202e", "\r"])
def test_printable_neutralises_each_terminal_control(clean_secrets, char):
    # an escape starts a sequence (clear the screen, retitle); LRM/RLM and overrides reorder what is shown;
    # a lone carriage return prints over the line
    out = clean_secrets.printable(f"model{char}[2J said ok")
    assert char not in out and out == "model?[2J said ok"


# --- io -------------------------------------------------------------------------------------------------------

def test_a_reader_holding_the_old_file_never_sees_the_new_one_half_written(tmp_path):
    from hmrcritic.io import atomic_write_text

    target = tmp_path / "scores.json"
    atomic_write_text(target, "old " * 1000)
    with open(target, encoding="utf-8") as reader:
        atomic_write_text(target, "new")
        # a new file renamed over the target: the open file is the old one, whole (a write in place would have
        # cut it to "new" under the reader)
        assert reader.read() == "old " * 1000
    assert target.read_text(encoding="utf-8") == "new"


def test_an_atomic_write_syncs_the_data_before_renaming_it_into_place(tmp_path, monkeypatch):
    import stat

    from hmrcritic import io as hio

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-file" if stat.S_ISREG(os.fstat(fd).st_mode) else "fsync-folder")
        return real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        return real_replace(src, dst)

    monkeypatch.setattr(hio.os, "fsync", fsync)
    monkeypatch.setattr(hio.os, "replace", replace)
    hio.atomic_write_text(tmp_path / "a.json", "{}")
    # the data on disk before the name points at it: else a power cut leaves an empty file under the name
    assert events.index("fsync-file") < events.index("replace") < events.index("fsync-folder")


def test_a_durable_append_is_synced_and_a_diagnostic_one_is_not(tmp_path, monkeypatch):
    import stat

    from hmrcritic import io as hio

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(hio.os, "fsync", lambda fd: (synced.append(stat.S_ISREG(os.fstat(fd).st_mode)),
                                                     real_fsync(fd)))
    hio.append_jsonl(tmp_path / "log.jsonl", {"a": 1})
    hio.append_jsonl(tmp_path / "log.jsonl", {"a": 2})
    assert synced.count(True) == 2
    synced.clear()
    hio.append_jsonl(tmp_path / "trace.jsonl", {"a": 1}, durable=False)
    assert synced == []
    assert [r["a"] for r in hio.read_jsonl(tmp_path / "log.jsonl")] == [1, 2]


def test_a_replaced_file_keeps_the_mode_the_user_gave_it(tmp_path):
    from hmrcritic.io import atomic_write_text

    target = tmp_path / "memory_export.json"
    target.write_text("{}", encoding="utf-8")
    os.chmod(target, 0o600)
    atomic_write_text(target, '{"rules": []}')
    assert (target.stat().st_mode & 0o777) == 0o600


def test_a_link_to_a_processs_descriptor_is_no_output_target(tmp_path):
    from hmrcritic.errors import InputError
    from hmrcritic.io import check_output_target

    with open(tmp_path / "real.txt", "w", encoding="utf-8") as fh:
        link = tmp_path / "out.json"
        link.symlink_to(f"/proc/self/fd/{fh.fileno()}")  # as /dev/stdout is, when fd 1 is a regular file
        with pytest.raises(InputError, match="not a regular file"):
            check_output_target(link, "trace")
    check_output_target(tmp_path / "real.txt")  # a plain file is fine


# --- config ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "minimum", "above", "ok"), [
    ("1", 1, False, True), ("0", 1, False, False),  # ≥ minimum: the minimum itself is allowed
    ("0", 0, True, False), ("0.001", 0, True, True),  # > minimum: the minimum itself is not
])
def test_env_number_bounds_at_the_minimum(monkeypatch, raw, minimum, above, ok):
    from hmrcritic.config import env_number
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_TEST_NUMBER", raw)
    if ok:
        assert env_number("HMRCRITIC_TEST_NUMBER", 5, float, minimum, above=above) == float(raw)
    else:
        with pytest.raises(InputError, match="HMRCRITIC_TEST_NUMBER"):
            env_number("HMRCRITIC_TEST_NUMBER", 5, float, minimum, above=above)


def test_a_judge_timeout_of_exactly_a_week_is_accepted(monkeypatch):
    from hmrcritic.config import JudgeSettings
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", str(7 * 24 * 3600))
    assert JudgeSettings().timeout_s == 7 * 24 * 3600
    monkeypatch.setenv("HMRCRITIC_VLM_TIMEOUT", str(7 * 24 * 3600 + 1))
    with pytest.raises(InputError, match="HMRCRITIC_VLM_TIMEOUT"):
        JudgeSettings()


def test_hmrcritic_api_key_wins_over_openai_api_key(monkeypatch):
    from hmrcritic.config import api_key

    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-hmr-first-1111")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-second-2222")
    assert api_key() == "sk-hmr-first-1111"
    monkeypatch.setenv("HMRCRITIC_API_KEY", "  ")
    assert api_key() == "sk-openai-second-2222"


# --- keypoints ------------------------------------------------------------------------------------------------

COCO17 = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
          "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
          "left_ankle", "right_ankle"]
# OpenPose's own layouts (its docs, output format): written out here, not taken from the reader's tables
BODY25 = ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
          "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
          "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe", "left_small_toe", "left_heel",
          "right_big_toe", "right_small_toe", "right_heel"]
OPENPOSE_COCO18 = ["nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                   "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                   "right_eye", "left_eye", "right_ear", "left_ear"]


def _read(tmp_path, data, image_size=None):
    from hmrcritic.hmr.data import read_keypoints_json

    path = tmp_path / "kp.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return read_keypoints_json(path, image_size=image_size)


def _person(x0=100.0, conf=0.9):
    """17 [x, y, c] points, point j at x = x0 + 10 j (so a point's x says which it is)."""
    return [[x0 + 10 * j, 200.0 + 5 * j, conf] for j in range(17)]


@pytest.mark.parametrize("layout", [BODY25, OPENPOSE_COCO18])
def test_openpose_points_are_read_by_name_into_coco17(tmp_path, layout):
    flat = []
    for i, _ in enumerate(layout):
        flat += [100.0 + 10 * i, 300.0, 0.9]  # x names the OpenPose index
    kp = _read(tmp_path, {"people": [{"pose_keypoints_2d": flat}]})
    got = [layout[int(round((x - 100.0) / 10))] for x in kp[:, 0]]
    assert got == COCO17


def test_the_most_confident_person_is_taken_not_the_first(tmp_path):
    people = [{"keypoints": np.array(_person(100, 0.2)).ravel().tolist()},
              {"keypoints": np.array(_person(600, 0.9)).ravel().tolist()}]
    with pytest.warns(UserWarning, match="2 people found; using the most confident \\(entry 1"):
        kp = _read(tmp_path, people)
    assert kp[0, 0] == pytest.approx(600.0)


def test_a_person_with_an_unreadable_confidence_does_not_outrank_a_confident_one(tmp_path):
    weak = _person(100, 0.2)
    weak[3][2] = None  # null in JSON: NaN once read; summed it would be NaN, and argmax takes NaN as the largest
    people = [{"keypoints": np.array(weak, dtype=float).ravel().tolist()},
              {"keypoints": np.array(_person(600, 0.9)).ravel().tolist()}]
    people[0]["keypoints"][11] = None
    with pytest.warns(UserWarning, match="entry 1"):
        kp = _read(tmp_path, people)
    assert kp[0, 0] == pytest.approx(600.0)


def test_mmpose_scores_above_one_are_clipped_and_rank_people_as_clipped(tmp_path):
    # RTMPose scores exceed 1: read as confidence 1, not refused as "outside [0, 1]"
    pts = [[100.0 + 10 * j, 200.0] for j in range(17)]
    kp = _read(tmp_path, [{"keypoints": pts, "keypoint_scores": [3.2] * 17}])
    assert np.all(kp[:, 2] == 1.0)
    # negative scores count as 0: a person with 10 sure points outranks one of 17 half-sure ones (9 > 8.5)
    a = {"keypoints": pts, "keypoint_scores": [0.9] * 10 + [-5.0] * 7}
    b = {"keypoints": [[600.0 + 10 * j, 200.0] for j in range(17)], "keypoint_scores": [0.5] * 17}
    with pytest.warns(UserWarning, match="entry 0"):
        kp = _read(tmp_path, [a, b])
    assert kp[0, 0] == pytest.approx(100.0)


def test_coco_visibility_flags_become_half_and_full_confidence(tmp_path):
    flat = []
    for j in range(17):
        flat += [100.0 + 10 * j, 200.0, (0, 1, 2)[j % 3]]
    kp = _read(tmp_path, {"keypoints": flat})
    assert kp[:, 2].tolist() == [(0.0, 0.5, 1.0)[j % 3] for j in range(17)]


def test_zero_one_confidences_of_a_plain_list_are_confidences_not_flags(tmp_path):
    pts = _person()
    for j in range(17):
        pts[j][2] = float(j % 2)  # a detector's 0/1 scores: no COCO annotation, so not visibility flags
    kp = _read(tmp_path, pts)
    assert kp[:, 2].tolist() == [float(j % 2) for j in range(17)]


def test_a_heatmap_peak_just_above_one_is_a_confidence_of_one(tmp_path):
    kp = _read(tmp_path, _person(conf=1.005))
    assert np.all(kp[:, 2] == 1.0)


def test_normalised_coordinates_with_their_slack_are_refused(tmp_path):
    from hmrcritic.errors import InputError

    pts = [[-0.05 + 1.1 * j / 16, 1.05 - 1.1 * j / 16, 0.9] for j in range(17)]  # from -0.05 to 1.05
    with pytest.raises(InputError, match="normalised"):
        _read(tmp_path, pts)


def test_points_past_the_border_within_two_percent_are_kept_visible(tmp_path):
    pts = _person()
    pts[16] = [640 + 0.01 * 640, 300.0, 0.9]  # 1 % past the right border: a detector's rounding, not truncation
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kp = _read(tmp_path, pts, image_size=(640, 480))
    assert kp[16, 2] == pytest.approx(0.9)


@pytest.mark.parametrize(("n_out", "refused"), [(5, False), (6, True)])
def test_more_than_a_third_of_the_points_outside_is_another_image(tmp_path, n_out, refused):
    from hmrcritic.errors import InputError

    pts = _person()
    for j in range(n_out):
        pts[j][0] = 2000.0 + j
    if refused:  # 6 × 3 > 17
        with pytest.raises(InputError, match="lies outside the 640×480 image"):
            _read(tmp_path, pts, image_size=(640, 480))
    else:  # 5 × 3 ≤ 17: a truncated person, those points hidden (and zeroed: no coordinate of a point not seen)
        with pytest.warns(UserWarning, match="treated as hidden"):
            kp = _read(tmp_path, pts, image_size=(640, 480))
        assert np.all(kp[:n_out] == 0.0) and np.all(kp[n_out:, 2] > 0)


def test_detector_results_for_two_images_are_refused(tmp_path):
    from hmrcritic.errors import InputError

    results = [{"image_id": 1, "keypoints": np.array(_person(100)).ravel().tolist(), "score": 0.9},
               {"image_id": 2, "keypoints": np.array(_person(300)).ravel().tolist(), "score": 0.8}]
    with pytest.raises(InputError, match="2 images"):
        _read(tmp_path, results)


def test_the_credentials_of_an_address_variable_are_masked_as_a_basic_auth_header_carries_them(clean_secrets,
                                                                                               monkeypatch):
    import base64

    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://admin:Open-Sesame@chroma.example:8000")
    sent = base64.b64encode(b"admin:Open-Sesame").decode()
    out = clean_secrets.scrub(f"401 from chroma; request headers: {{'authorization': '{sent}'}}")
    assert sent not in out


def test_a_device_is_no_output_target():
    from hmrcritic.errors import InputError
    from hmrcritic.io import check_output_target

    with pytest.raises(InputError, match="not a regular file"):
        check_output_target("/dev/null", "memory export")  # checked only: nothing is written


def test_a_record_with_integer_keys_reads_back(tmp_path):
    from hmrcritic.io import append_jsonl, read_jsonl

    append_jsonl(tmp_path / "log.jsonl", {"per_step": {9: 0.5, 10: 0.25}})
    # JSON makes the keys strings and sorts them "10" before "9": summed as written, the record read back failed
    # its own checksum and was dropped without a word
    got = read_jsonl(tmp_path / "log.jsonl")
    assert len(got) == 1 and got[0]["per_step"] == {"9": 0.5, "10": 0.25}


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_env_number_refuses_a_value_that_is_no_finite_number(monkeypatch, raw):
    from hmrcritic.config import env_number
    from hmrcritic.errors import InputError

    monkeypatch.setenv("HMRCRITIC_TEST_NUMBER", raw)
    with pytest.raises(InputError, match="finite"):
        env_number("HMRCRITIC_TEST_NUMBER", 5.0, float, 0)


def test_a_relative_xdg_data_home_is_ignored(monkeypatch, tmp_path):
    from hmrcritic import config

    monkeypatch.delenv("HMRCRITIC_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", "relative/share")
    assert config.home_dir() == tmp_path / ".local" / "share" / "hmrcritic"  # computed only: nothing is made


def test_a_home_linked_to_nothing_is_refused_naming_the_link(monkeypatch, tmp_path):
    from hmrcritic import config
    from hmrcritic.errors import InputError

    link = tmp_path / "home"
    link.symlink_to(tmp_path / "unmounted-drive")
    monkeypatch.setenv("HMRCRITIC_HOME", str(link))
    with pytest.raises(InputError, match="symbolic link to .*unmounted-drive"):
        config.memory_dir()
    assert not (tmp_path / "unmounted-drive").exists()


def test_a_relative_home_variable_does_not_make_the_home_relative(monkeypatch):
    from hmrcritic import config

    monkeypatch.delenv("HMRCRITIC_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", "relative-home")
    assert config.home_dir().is_absolute()  # computed only: nothing is made


def test_an_api_key_with_a_space_inside_is_refused_by_position_without_showing_it(monkeypatch):
    from hmrcritic.config import api_key
    from hmrcritic.errors import InputError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("HMRCRITIC_API_KEY", "sk-abc defXYZ")
    with pytest.raises(InputError, match="position 7 of 13") as err:
        api_key()
    assert "defXYZ" not in str(err.value)


def test_a_blank_number_variable_is_unset(monkeypatch):
    from hmrcritic.config import JudgeSettings

    monkeypatch.setenv("HMRCRITIC_VLM_RETRIES", "  ")
    assert JudgeSettings().max_retries == 4  # the documented default


def test_a_short_secret_inside_a_longer_one_leaves_nothing_of_the_longer_in_view(clean_secrets):
    # both under the 16 characters whose pieces are masked too: only masking the longer one first hides it whole
    clean_secrets.register_secret("Pw-1234")
    clean_secrets.register_secret("Pw-1234-xyzw")
    out = clean_secrets.scrub("tried Pw-1234-xyzw, then Pw-1234")
    assert "xyzw" not in out and "1234" not in out


def test_a_short_key_read_with_a_windows_line_ending_is_masked_as_sent(clean_secrets, monkeypatch):
    monkeypatch.setenv("HMRCRITIC_API_KEY", "abc123XYZ\r\n")  # sent stripped (config.api_key)
    assert "abc123XYZ" not in clean_secrets.scrub("401: key abc123XYZ is not valid")


def test_a_percent_encoded_password_of_an_address_variable_is_masked_as_decoded(clean_secrets, monkeypatch):
    # the client decodes the user-info before it uses it, and an error can quote it so
    monkeypatch.setenv("HMRCRITIC_CHROMA_URL", "http://bob:p%40ss%2Fw0rd@chroma.example:8000")
    assert "p@ss/w0rd" not in clean_secrets.scrub("authentication failed for bob with password p@ss/w0rd")
