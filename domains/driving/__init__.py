"""The driving domain plugin."""
