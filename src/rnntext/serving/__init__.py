"""Serving: the HTTP API and web page (server.py) over an inference.Predictor."""
