"""Bytes on disk: atomic writes and the content-addressed cache."""
