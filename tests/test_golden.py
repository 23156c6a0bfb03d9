"""CI fails when a change alters the bits of the golden runs (tests/golden.py)."""

from __future__ import annotations

import json

import pytest

import golden

pytestmark = pytest.mark.quick  # in `pytest -m quick` (BUILD.md)


def _load() -> dict:
  return json.loads(golden.GOLDEN.read_text())


def _platform_differences(saved: dict, here: dict) -> list[str]:
  """Why no platform of the golden file is this one ([] when one is)."""
  if here in golden.platforms(saved):
    return []
  made_on = saved["made_on"]
  # Other fields are a change of golden.py (of what it records), not another
  # platform: that must fail, never skip the bits silently.
  assert set(here) == set(made_on) and set(here["versions"]) == set(made_on["versions"]), (
      f"golden.platform_key() records other fields than the golden file "
      f"({sorted(here['versions'])} vs {sorted(made_on['versions'])}): fix golden.py")
  out = [f"{k} {made_on['versions'].get(k)!r} -> {v!r}" for k, v in here["versions"].items()
         if made_on["versions"].get(k) != v]
  out += [f"{k} {made_on.get(k)!r} -> {here[k]!r}" for k in golden.PLATFORM_KEYS
          if made_on.get(k) != here[k]]
  return out


def test_golden_file_records_its_platform_and_every_config():
  saved = _load()
  assert set(saved["configs"]) == set(golden.CONFIGS)
  assert saved["made_on"]["versions"]["jax"] and "xla_cpu_pool" in saved["made_on"]


@pytest.mark.parametrize("name", sorted(golden.CONFIGS))
def test_bits_match_the_golden_digests(name, tmp_path):
  saved = _load()
  differences = _platform_differences(saved, golden.platform_key())
  if differences:
    pytest.skip("golden digests were made on another platform (" + "; ".join(differences) +
                "), where bits may legitimately differ; run `python tests/golden.py --confirm` "
                "on this platform to guard it")
  want, got = saved["configs"][name], golden.compute(name, tmp_path)
  assert got["steps"] == want["steps"]
  changed = [leaf for leaf in want["leaf_digests"]
             if got["leaf_digests"].get(leaf) != want["leaf_digests"][leaf]]
  first_loss = next((i + 1 for i, (a, b) in enumerate(zip(got["losses"], want["losses"]))
                     if a != b), None)
  assert not changed and first_loss is None and got["trace_sha256"] == want["trace_sha256"], (
      f"{name}: the bits changed: {len(changed)} leaves differ ({', '.join(changed[:4])}), "
      f"first differing loss at step {first_loss}. If intended, regenerate with "
      f"`python tests/golden.py --update` and say why in the commit.")


def test_a_changed_digest_fails_the_golden_test(tmp_path, monkeypatch):
  saved = _load()
  name = sorted(golden.CONFIGS)[0]
  saved["configs"][name]["leaf_digests"]["model/conv1/bias"] = "0" * 64
  tampered = tmp_path / "digests.json"
  tampered.write_text(json.dumps(saved))
  monkeypatch.setattr(golden, "GOLDEN", tampered)
  if _platform_differences(saved, golden.platform_key()):
    pytest.skip("golden digests were made on another platform")
  with pytest.raises(AssertionError, match=r"1 leaves differ \(model/conv1/bias\)"):
    test_bits_match_the_golden_digests(name, tmp_path / "work")


def test_confirm_adds_no_platform_whose_digests_differ(tmp_path, monkeypatch):
  saved = _load()
  name = sorted(golden.CONFIGS)[0]
  saved["configs"][name]["trace_sha256"] = "0" * 64
  tampered = tmp_path / "digests.json"
  tampered.write_text(json.dumps(saved))
  monkeypatch.setattr(golden, "GOLDEN", tampered)
  other = dict(golden.platform_key(), cpu_features=["a-feature-no-machine-has"])
  monkeypatch.setattr(golden, "platform_key", lambda: other)
  assert golden.confirm() == 1
  assert "confirmed_on" not in json.loads(tampered.read_text()) or other not in (
      json.loads(tampered.read_text())["confirmed_on"])
