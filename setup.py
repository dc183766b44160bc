"""Packaging shim: maps the top-level kernels/ folder into the package as barrierkit.kernels."""
from setuptools import setup

setup(
    packages=["barrierkit", "barrierkit.backends", "barrierkit.kernels"],
    package_dir={"barrierkit": "barrierkit", "barrierkit.kernels": "kernels"},
)
