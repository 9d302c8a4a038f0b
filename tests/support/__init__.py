"""Test support: real redis-server and turnout-server processes, a small Pusher test client."""
