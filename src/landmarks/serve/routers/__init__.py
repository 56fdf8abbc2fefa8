"""The API, one router per concern: recognition (read, correct, enrol, undo), review (suggestions), access (tokens, audit)."""
