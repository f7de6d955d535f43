"""Tests of whispr.security and the Redis limiter backend."""
