"""edge.apps: front ends built on the public edge API (the Textual chat app lands here)."""
