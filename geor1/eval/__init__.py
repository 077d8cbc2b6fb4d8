"""Evaluation runners: a model on pairing episodes or geolocation samples -> predictions + metrics files."""
