"""The TUI's screens, one per module: browser, live run, fault dialog, help."""
