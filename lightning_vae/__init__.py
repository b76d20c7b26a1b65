"""lightning_vae: why likelihood training breaks on manifold data, and how spread fixes it."""

__all__ = ["ELBO", "SpreadELBO", "VAE"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``VAE``, ``ELBO``, ``SpreadELBO`` on first use: torch and Lightning take seconds to
    import, and the commands that plan or read (``--help``, ``sweep --dry_run``) need neither."""
    if name == "VAE":
        from lightning_vae.model import VAE

        return VAE
    if name in ("ELBO", "SpreadELBO"):
        from lightning_vae import objectives

        return getattr(objectives, name)
    raise AttributeError(f"module 'lightning_vae' has no attribute {name!r}")
