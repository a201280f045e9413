"""A fuzzing campaign over files written by rbe.save (tests/fuzz_load.py runs longer ones):
every mutated or forged file loads or raises FormatError, without a crash, a hang or another
exception, and a rejected file stays within 64 MiB + 4 x its size."""
import json
import os

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_load.py")
CAMPAIGN = """
import json, runpy, sys
campaign = runpy.run_path(sys.argv[1])["campaign"]
print(json.dumps(campaign(int(sys.argv[2]), int(sys.argv[3]))))
"""


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.exists("/proc/self/clear_refs"),
                    reason="the campaign forks a child per case and reads /proc")
def test_fuzzed_files_load_or_raise_format_error(python_in_child):
    done = python_in_child(CAMPAIGN, FUZZ, "400", "20261126", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["findings"] == []
    assert set(result["outcomes"]) == {"FormatError", "loaded"}
    # the campaign reaches both ends: files it rejects and forgeries that pass every check
    assert result["outcomes"]["FormatError"] > 200 and result["outcomes"]["loaded"] > 5
    assert 0 < result["worst_memory_vs_bound"] <= 1
