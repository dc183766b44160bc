"""barrierkit: barrier certificates for the robustness of neural-network training to poisoning."""
__version__ = "0.1.0"
