"""Flask app. Run: gunicorn -c gunicorn.conf.py {{ cookiecutter.package_name }}.app:app

Gunicorn's threaded workers (gunicorn.conf.py) serve the streams: a sync worker would kill a
long stream at its timeout and serve one stream per process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import api{{ ", jobs_api" if cookiecutter.worker == "celery" else "" }}, metrics, telemetry
from . import http_contract as contract
{%- if cookiecutter.caller_auth == "keys" %}
from .admission import Gate, load_callers_or_exit
{%- else %}
from .admission import Gate, warn_open
{%- endif %}
from .chat_sync import ChatService, create_client
from .errors import GatewayError
{%- if cookiecutter.caller_auth == "keys" %}
from .limiter import Limiter
{%- endif %}
from .logs import configure_logging
from .settings import Settings, load_settings_or_exit

if TYPE_CHECKING:
    from .otlp import Tracing


def create_app(settings: Settings) -> Flask:
    configure_logging(settings.log_level, secrets=settings.secret_values)
    metrics.configure(settings)
    if settings.metrics == "on":  # off: prometheus_client is not even imported
        from . import prometheus

        metrics.install(prometheus.sink())
    telemetry.start_or_exit(settings)  # spans and metrics over OTLP, if configured
    app = Flask(__name__)
    # One client per process: it holds the connections to the gateway.
    app.extensions["chat"] = ChatService(create_client(settings), settings)
{%- if cookiecutter.caller_auth == "keys" %}
    # gunicorn.conf.py checks the worker count against the limits once gunicorn has read it.
    app.extensions["gate"] = Gate(settings, load_callers_or_exit(settings, workers=1), workers=1)
    redis_url = settings.limits_redis_url
    app.extensions["limiter"] = Limiter(redis_url.get_secret_value() if redis_url else None)
{%- else %}
    warn_open()
    app.extensions["gate"] = Gate(settings)
{%- endif %}
    app.register_blueprint(api.bp)
{%- if cookiecutter.worker == "celery" %}
    jobs_api.install(app)  # POST /v1/jobs, GET /v1/jobs/{id}
{%- endif %}
    if settings.metrics == "on":
        app.register_blueprint(api.metrics_bp)

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = contract.request_id_from(request.headers.get(contract.REQUEST_ID_HEADER))

    slots = contract.Slots(settings.max_streams)
    app.extensions["slots"] = slots

    hosts = settings.allowed_host_set

    @app.before_request
    def guard() -> None:
        """A Host outside ALLTKN_ALLOWED_HOSTS gets 400 (`check_host`); each chat request holds
        one of the worker's slots until its answer is out (a stream's too), or gets 503
        `server_busy`: the other threads stay for /healthz."""
        contract.check_host(request.host, request.path, hosts)
        if request.path in contract.CHAT_PATHS and request.method == "POST":
            try:
                slots.take()
            except GatewayError:
                api.discard_after_the_answer(api.BUSY_DISCARD_S)  # its body is unread
                raise
            g.slot = True

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        if g.pop("slot", False):
            response.call_on_close(slots.give_back)
        response.headers[contract.REQUEST_ID_HEADER] = g.request_id
        response.headers.setdefault(*contract.NOSNIFF)
{%- if cookiecutter.caller_auth == "keys" %}
        if admission := g.get("admission"):  # the caller's limits, after this request
            response.headers.update(admission.headers)
{%- endif %}
        return response

    @app.errorhandler(GatewayError)
    def gateway_failed(error: GatewayError) -> contract.Reply:
{%- if cookiecutter.caller_auth == "keys" %}
        return contract.gateway_error(error, g.request_id, g.get("caller"))
{%- else %}
        return contract.gateway_error(error, g.request_id)
{%- endif %}

    @app.errorhandler(HTTPException)
    def no_route(error: HTTPException) -> contract.Reply:
        status = error.code or 500
        body = contract.no_route_body(status, request.method, request.path, g.request_id)
        allowed = isinstance(error, MethodNotAllowed) and error.valid_methods
        return body, status, {"Allow": ", ".join(allowed)} if allowed else {}

    if telemetry.tracing:
        trace_requests(app, telemetry.tracing)
    return app


def trace_requests(app: Flask, tracing: Tracing) -> None:
    """A SERVER span per request (telemetry.py), ended with its response (a stream's too)."""

    @app.before_request
    def start_span() -> None:
        if request.path not in contract.UNTRACED_PATHS:
            headers = request.headers
            g.span = tracing.server_span(request.method, request.scheme, request.path, headers)

    @app.after_request
    def end_span_with_response(response: Response) -> Response:
        if span := g.get("span"):
            span.status = response.status_code
            route, request_id = request.url_rule.rule if request.url_rule else None, g.request_id
            response.call_on_close(lambda: span.end(route, request_id))
        return response

    @app.teardown_request
    def detach_span(error: BaseException | None) -> None:
        if span := g.get("span"):
            span.detach()  # the request's context ends here, before a stream's body


app = create_app(load_settings_or_exit())
