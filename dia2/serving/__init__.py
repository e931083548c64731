"""Serving: many utterances at once on one model (`Engine`), for the server and the studio."""
