"""The remote_sensing domain plugin."""
