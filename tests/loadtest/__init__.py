"""Tests of the loadtest package."""
