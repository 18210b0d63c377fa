"""Every service of the contract is served, except the one customers implement."""

from __future__ import annotations

import importlib
import pkgutil

from google.protobuf.internal import api_implementation

import chat.v1
from server.api.served import SERVED_SERVICES
from server.auth.scopes import REQUIRED_SCOPES

#: Implemented by the customer's responder, called by this service.
CLIENT_SIDE = {"chat.v1.ResponderService"}


def contract_services() -> dict[str, list[str]]:
    services: dict[str, list[str]] = {}
    for module_info in pkgutil.iter_modules(chat.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"chat.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            services[service.full_name] = [m.name for m in service.methods]
    return services


def test_every_contract_service_is_served() -> None:
    assert set(contract_services()) - CLIENT_SIDE == set(SERVED_SERVICES)


def test_every_served_method_has_a_scope() -> None:
    methods = {
        f"/{service}/{method}"
        for service, names in contract_services().items()
        if service not in CLIENT_SIDE
        for method in names
    }
    assert methods == set(REQUIRED_SCOPES)


def test_protobuf_runs_on_the_upb_backend() -> None:
    """The C backend: the pure-Python one is several times slower on every call."""
    assert api_implementation.Type() == "upb"
