"""Drive clients/pusher-resume/tools/{browser,node}-fleet.mjs from a trio test: start the
process, send it commands, collect its JSON-line records (protocol: tools/fleet-io.mjs) with
tests.support.scripts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import trio

from tests.support.procs import REPO
from tests.support.scripts import LineScript, start_script

PACKAGE = REPO / "clients" / "pusher-resume"
NODE = shutil.which("node")


def require_package_built() -> None:
    """Fail (not skip: CI must run these) naming the setup step that is missing."""
    if NODE is None:
        pytest.fail("node (Node.js 18+) is not installed; scripts/setup.sh needs it")
    for path, what in [
        (PACKAGE / "node_modules" / "pusher-js", "npm packages of clients/pusher-resume"),
        (PACKAGE / "dist" / "esm" / "index.js", "the build of clients/pusher-resume"),
    ]:
        if not path.exists():
            pytest.fail(f"{path} is missing: run scripts/setup.sh (it installs {what})")


async def start_fleet(nursery: trio.Nursery, tool: str, log_dir: Path, *, key: str,
                      secret: str, ws_host: str, ws_port: int) -> LineScript:
    """Start tools/<tool>.mjs and wait for its ``ready`` record (``stop()`` ends it: the fleet
    exits by itself when its stdin closes)."""
    require_package_built()
    assert NODE is not None
    settings = json.dumps({"key": key, "wsHost": ws_host, "wsPort": ws_port})
    fleet = start_script(nursery, [NODE, str(PACKAGE / "tools" / f"{tool}.mjs"), settings],
                         log_dir / f"{tool}.stderr.log", name=tool, cwd=PACKAGE,
                         env={**os.environ, "FLEET_APP_SECRET": secret},
                         fatal=("fatal", "page_error"))
    await fleet.wait_for(lambda: bool(fleet.of("ready")), f"{tool} to start", 90)
    return fleet
