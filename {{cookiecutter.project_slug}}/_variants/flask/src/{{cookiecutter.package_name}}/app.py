"""Flask app. Run: gunicorn -c gunicorn.conf.py {{ cookiecutter.package_name }}.app:app

Gunicorn's threaded workers (gunicorn.conf.py) serve the streams: a sync worker would kill a
long stream at its timeout and serve one stream per process.
"""

from __future__ import annotations

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import api, metrics, prometheus
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


def create_app(settings: Settings) -> Flask:
    configure_logging(settings.log_level, secrets=settings.secret_values)
    metrics.configure(settings)
    metrics.install(prometheus.sink())
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

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = contract.request_id_from(request.headers.get(contract.REQUEST_ID_HEADER))

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        response.headers[contract.REQUEST_ID_HEADER] = g.request_id
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

    return app


app = create_app(load_settings_or_exit())
