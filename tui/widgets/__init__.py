"""The live run screen's panels, one widget per module."""
