"""Workstation tools: the data sets (dogImages, the digits fallback) and the /opt/ml tree writer.

Host-side only: the image does not carry this package (the Dockerfile copies train/ and serve/);
the demo, the local smoke tests, deploy.py and the tests use it.
"""
