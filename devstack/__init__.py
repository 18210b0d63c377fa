"""The embedded development stack: real MongoDB-wire, Redis and Kafka servers as child processes.

Used by ``chat-dev`` (``make run``) and by the test fixtures. The servers come from the
``embedded`` extra and are only ever executed, never imported: SecantusDB is GPL-2.0-only and
must stay out of the service's own modules. Nothing in ``server/`` or ``webhook_bridge/``
imports this package.
"""
