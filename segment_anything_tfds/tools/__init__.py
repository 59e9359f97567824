"""Exports, statistics, pictures and fake data."""
