"""Slack and Teams: signatures, the command grammar, replies, and the two endpoints."""
