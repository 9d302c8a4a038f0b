"""The fuzz suite's generators and live fuzzer (tests/server/test_fuzz*.py run them in CI).

``python -m tests.fuzz --seed N --minutes M`` runs the live fuzzer for longer against its own
redis-server, node and HAProxy (docs/security.md)."""
