"""The online API's pure logic: its configuration, API keys and the Redis circuit breaker.

What it offers:

* :mod:`strata.serving.config` — :class:`ApiConfig` (``configs/api.yaml``) and
  :func:`load_api_config`;
* :mod:`strata.serving.apikeys` — API keys with scopes, stored only as SHA-256
  (:class:`KeyRing`, :func:`new_key`, :class:`Scope`);
* :mod:`strata.serving.breaker` — :class:`CircuitBreaker`, which turns a failing Redis into
  fast 503s and probes it again after a pause.

The FastAPI app itself lives in ``api/``; it may import this package, never the reverse.
"""
