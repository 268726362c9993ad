"""ALLTKN gateway integration: settings, client, chat service, errors and logging."""

__version__ = "0.1.0"
# The version of the template this project was generated from (shown in support reports).
TEMPLATE_VERSION = {{ cookiecutter._template_version | default("unknown") | tojson }}
CLIENT_NAME = {{ cookiecutter.project_slug | tojson }}
# pyproject.toml's description, for the CLI's --help (importlib.metadata would double its time).
{#- ruff format quotes a string holding double quotes with single ones: render it that way. #}
{%- set description = cookiecutter.description | tojson %}
DESCRIPTION = {% if '"' in cookiecutter.description %}'{{ description[1:-1] | replace('\\"', '"') }}'{% else %}{{ description }}{% endif %}
# Lets the gateway's logs and support tell which service made a call.
CLIENT_HEADERS = {"X-Client-Name": f"{CLIENT_NAME}/{__version__}"}
