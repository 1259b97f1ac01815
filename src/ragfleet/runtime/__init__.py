"""Shared runtime every ragfleet service is built on: settings, errors, server factory, logging."""
