"""The knowledge bases of known failures, a leaf: nothing here imports mailctl but errors.

- mailctl.knowledge.smtp: SMTP replies, TLS and socket failures -> cause, fix, exit code
- mailctl.knowledge.http: Microsoft Graph and EWS error codes -> meaning, hint, exit code

Transports build their errors with these tables; diagnostics explains failures with them."""
