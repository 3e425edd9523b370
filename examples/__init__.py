"""Runnable examples of the seed's three patterns: chat room, presence, notifications."""
