"""Packaging glue: the top-level ``models/`` folder installs as ``candlejax.models``."""

from setuptools import find_packages, setup

core = find_packages(include=["candlejax", "candlejax.*"])
models = ["candlejax." + p for p in find_packages(include=["models", "models.*"])]

setup(packages=core + models, package_dir={"candlejax.models": "models"})
