"""Shared fixtures: the real services the tests start (Kafka, S3, PostgreSQL databases, HTTP)."""

pytest_plugins = ["fixtures_services"]
