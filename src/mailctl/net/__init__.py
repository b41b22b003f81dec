"""The network layer below the transports and the OAuth code: what every connection mailctl
makes needs, whichever protocol runs over it.

- mailctl.net.tls: the one TLS builder. A profile's tls_verify, ca_file and tls_fingerprint
  decide the verification mode (system, ca_file, fingerprint, none); it gives the
  ssl.SSLContext for sockets (SMTP) and the `verify=` value for requests (HTTP).
- mailctl.net.http: the one requests session factory (trust_env off, verify from net.tls,
  proxies from the profile or the environment with NO_PROXY, default timeout, User-Agent),
  the request helper that waits out 429/503 Retry-After, and URL/reason redaction.
- mailctl.net.proxy: proxy URLs (parse_proxy; the URL requests gets) and SOCKS5 / HTTP
  CONNECT tunnels for sockets.
- mailctl.net.certs: certificates as diagnostics show them (the peer's chain, a description).

The package imports nothing of mailctl's but mailctl.errors (tests/test_architecture.py):
callers pass plain values (a mapping of profile values and the profile's name). requests,
urllib3, PySocks and cryptography are imported inside functions only, so `mailctl --help`
never loads them."""
