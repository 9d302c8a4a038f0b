from pytest_trio.enable_trio_mode import *  # noqa: F403
