"""Modal screens of the chat app, one per file."""
