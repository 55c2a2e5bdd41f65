"""Image sets for pretraining and evaluation: packaged sources, corruptions, shifted domains.

    from metatpt_jax.data import load_domain
    domain = load_domain("fashion_mnist:gaussian_noise:3", num_images=1000, seed=0)
"""
from metatpt_jax.data.corruptions import CORRUPTIONS, SEVERITIES, SHIFTS
from metatpt_jax.data.domains import Domain, load_domain, load_source, parse_spec
from metatpt_jax.data.sources import MissingSourceError

__all__ = ["CORRUPTIONS", "SEVERITIES", "SHIFTS", "Domain", "load_domain", "load_source",
           "parse_spec", "MissingSourceError"]
