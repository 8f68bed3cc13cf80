"""Fixtures of the server tests: services around the tiny random model (routes, limits, errors) and the
bundled default model (answers compared across protocols), and in-process clients."""

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving import png_of
from xsam.inference.predictor import XSamPredictor
from xsam.modeling.xsam import XSamModel
from xsam.serve import ServeSettings, XSamService, create_app


@pytest.fixture
def image_png() -> bytes:
    """A 48 x 64 random RGB PNG."""
    return png_of(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.fixture
def service_factory(tiny_model) -> Iterator[Callable[..., XSamService]]:
    """Makes services around the tiny model with the given settings; closes them afterwards."""
    services = []

    def make(**settings) -> XSamService:
        service = XSamService(XSamPredictor(tiny_model), ServeSettings(**settings), "tiny")
        services.append(service)
        return service

    yield make
    for service in services:
        service.close()


@pytest.fixture
def client_factory(service_factory) -> Iterator[Callable[..., TestClient]]:
    """Makes in-process clients of tiny-model servers with the given settings."""
    clients = []

    def make(**settings) -> TestClient:
        client = TestClient(create_app(service_factory(**settings)), raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_factory) -> TestClient:
    return client_factory()


@pytest.fixture(scope="module")
def default_client() -> Iterator[TestClient]:
    """An in-process client of a server around the bundled default model (shared by a module)."""
    service = XSamService(XSamPredictor(XSamModel.from_pretrained("default")), ServeSettings(), "default")
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        yield client
