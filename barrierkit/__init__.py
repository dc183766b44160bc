"""barrierkit: barrier certificates for the robustness of neural-network training to poisoning."""
__version__ = "0.1.0"


def certify(config, **kwargs):
    """Search the largest certified poisoning budget: see :func:`barrierkit.api.certify`."""
    from .api import certify as _certify

    return _certify(config, **kwargs)


def replay(config, delta, seeds, **kwargs):
    """Re-run one trajectory from its seeds: see :func:`barrierkit.api.replay`."""
    from .api import replay as _replay

    return _replay(config, delta, seeds, **kwargs)
