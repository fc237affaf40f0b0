"""Celery workers: the app and its reliability settings, ingest, GPU inference, webhooks, reconciler."""
