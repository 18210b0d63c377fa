"""What the tests share: helpers, stand-ins and fixtures, imported by the test modules.

No test module imports another test module or a conftest (tests/unit/test_layout.py checks
it); the fixtures defined here are registered by ``pytest_plugins`` in tests/conftest.py.
"""
