"""The OpenAPI schema fuzzed with schemathesis: for every operation, a bounded number of generated
requests (valid and invalid against the schema) and not one 5xx answer."""

import schemathesis
import torch
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from xsam.config import XSamConfig
from xsam.inference.predictor import XSamPredictor
from xsam.modeling.xsam import XSamModel
from xsam.serve import ServeSettings, XSamService, create_app

EXAMPLES_PER_OPERATION = 25


def _app():
    with torch.random.fork_rng():  # built at collection: leave the global generator alone
        torch.manual_seed(0)
        model = XSamModel(XSamConfig.tiny()).eval()
    # a queue deep enough and a timeout long enough that neither 503 nor 504 is a fuzzing outcome
    limits = ServeSettings(queue_size=64, timeout=600)
    return create_app(XSamService(XSamPredictor(model), limits, "tiny"))


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])
