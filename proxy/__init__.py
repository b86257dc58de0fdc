"""gantry-proxy: a Twisted TCP proxy that switches routes atomically and drains backends.

The package knows nothing of gantry; programs talk to the daemon through `proxy.client`.
"""

__version__ = "0.1.0"
