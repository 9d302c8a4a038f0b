"""The JavaScript package's own suite (clients/pusher-resume: `npm test` builds it, type-checks
the README's adoption lines against the real pusher-js/Echo types, and runs `node --test` with a
scripted websocket server over the oldest and newest pusher-js 8.x and Laravel Echo 2.x it
claims), run from pytest so ./run-tests and CI include it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.clients.fleet import PACKAGE, require_package_built


def test_pusher_resume_node_suite_passes() -> None:
    require_package_built()
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed; scripts/setup.sh needs it")
    result = subprocess.run([npm, "test"], cwd=PACKAGE, capture_output=True, text=True,
                            timeout=240, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"npm test failed ({result.returncode}):\n{output[-12000:]}"
    passed = re.search(r"^# pass (\d+)$", output, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", output, re.MULTILINE)
    assert passed, f"no node --test summary in the output:\n{output[-4000:]}"
    assert failed, f"no node --test summary in the output:\n{output[-4000:]}"
    assert int(failed.group(1)) == 0, output[-12000:]
    # Every scenario for two pusher-js and two Echo versions: a suite that shrank is a failure.
    assert int(passed.group(1)) >= 40, output[-4000:]
